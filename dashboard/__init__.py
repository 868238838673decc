"""qlab's Streamlit dashboard: pages, components and the services they call into qcore through."""

import logging

# Outside a Streamlit runtime (Dask workers, job threads in tests, AppTest, scripts importing a
# page's services) st.cache_data falls back to an in-memory cache, which is what qlab wants there;
# Streamlit says so once per cached function with a WARNING that is only noise.
logging.getLogger("streamlit.runtime.caching.cache_data_api").addFilter(
    lambda record: "No runtime found" not in record.getMessage()
)
