//! Stream-to-job client library (work in progress: see issue 3).
