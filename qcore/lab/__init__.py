"""The lab's workflows: conversion, QAT, bringing in .tflite files, op cost, reports."""
