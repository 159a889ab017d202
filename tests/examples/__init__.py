"""Tests of the example applications, run through real servers."""
