//! handset-shell (being written)
