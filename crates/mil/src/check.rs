//! Type and shape checker. Filled in separately.
