//! tandemctl as a library. (Being written.)
