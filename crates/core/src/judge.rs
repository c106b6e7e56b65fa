//! Gate and abort-rule evaluation.
