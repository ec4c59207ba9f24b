//! The orders service (work in progress).
