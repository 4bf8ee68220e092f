//! strata serve (being written)
