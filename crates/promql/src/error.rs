//! The one error type of the crate; every message names the offending part so a user can fix
//! the rule, the template or the target without reading the code.

/// Everything that can go wrong parsing, checking or evaluating a query, or ingesting samples.
#[derive(Debug, thiserror::Error)]
pub enum PromqlError {
    /// The query is not valid PromQL.
    #[error("cannot parse PromQL `{query}`: {message}")]
    Parse { query: String, message: String },

    /// The query is valid PromQL but uses something cutover does not evaluate.
    #[error("unsupported {kind} `{name}`; supported: {supported}")]
    Unsupported {
        /// "function", "aggregation", "operator", "modifier", ...
        kind: &'static str,
        name: String,
        supported: String,
    },

    /// The query could not be evaluated against the data (e.g. many-to-many matching).
    #[error("cannot evaluate `{query}`: {message}")]
    Eval { query: String, message: String },

    /// A line of a text exposition is malformed.
    #[error("exposition line {line}: {message}")]
    Exposition { line: usize, message: String },

    /// A `{{name}}` in a rule template has no value.
    #[error("unknown template variable `{{{{{name}}}}}`; known: {known}")]
    UnknownVariable { name: String, known: String },

    /// A rule template is malformed (e.g. an unclosed `{{`).
    #[error("bad template: {0}")]
    Template(String),
}
