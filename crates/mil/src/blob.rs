//! Weight files in Core ML blob storage v2 (spec section 3). Filled in separately.
