//! io_uring plumbing. (Being written.)
