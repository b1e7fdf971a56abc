"""Maintainer tools for the course (not imported by the notebooks).

tools.notebooks   solutions/ → chapters/ generation, notebook normalisation and the freshness check
"""
