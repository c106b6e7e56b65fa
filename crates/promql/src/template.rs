//! `{{name}}` substitution for rule templates.

use std::collections::BTreeMap;

use crate::PromqlError;

/// Substitutes every `{{name}}` (surrounding spaces inside the braces allowed) with
/// `vars[name]`. Done on text before parsing so a template can parametrise anything (a metric
/// name, a label value, a threshold). An unknown name is an error naming it, rather than an
/// empty string that would silently select nothing.
pub fn expand(template: &str, vars: &BTreeMap<String, String>) -> Result<String, PromqlError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            PromqlError::Template(format!(
                "`{{{{` at byte {} is never closed with `}}}}`",
                template.len() - rest.len() + start
            ))
        })?;
        let name = after[..end].trim();
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                return Err(PromqlError::UnknownVariable {
                    name: name.to_string(),
                    known: if vars.is_empty() {
                        "(none)".to_string()
                    } else {
                        vars.keys().cloned().collect::<Vec<_>>().join(", ")
                    },
                })
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}
