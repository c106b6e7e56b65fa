//! No link to a doc that does not exist (issue 10 item 7): every relative Markdown link in the
//! repository's Markdown (README, docs/, ...) resolves to a file, and to a heading when it has
//! an anchor; every `docs/<name>.md` or `examples/<file>` a message or a doc names exists.
//!
//! It lives with the core crate's tests because that is the cheapest crate to build; it reads
//! the repository's files and nothing of the crate.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file under `dir` whose name ends with `ext`, skipping build output and hidden dirs.
fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && name != "node_modules" && !name.starts_with('.') {
                files(&p, ext, out);
            }
        } else if name.ends_with(ext) {
            out.push(p);
        }
    }
}

/// The targets of inline Markdown links `[text](target)` outside code.
fn link_targets(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code spans are not links.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push(target.trim_matches(['<', '>']).to_string());
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(md: &str) -> Vec<String> {
    md.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// What is wrong with each link of the Markdown file `from` (text `md`).
fn broken_links(from: &Path, md: &str) -> Vec<String> {
    let mut out = Vec::new();
    for target in link_targets(md) {
        if target.is_empty()
            || target.contains("://")
            || target.starts_with("mailto:")
            || target.starts_with("//")
        {
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((f, a)) => (f, Some(a)),
            None => (target.as_str(), None),
        };
        let path = if file.is_empty() {
            from.to_path_buf()
        } else {
            from.parent().unwrap_or(Path::new(".")).join(file)
        };
        if !path.exists() {
            out.push(format!("{}: ({target}): no such file", from.display()));
            continue;
        }
        if let (Some(a), true) = (anchor, file.is_empty() || file.ends_with(".md")) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if !anchors(&text).iter().any(|h| h == a) {
                out.push(format!("{}: ({target}): no heading #{a}", from.display()));
            }
        }
    }
    out
}

/// Every `docs/<name>.md` and `examples/<file>` named in `text`.
fn named_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["docs/", "examples/"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before_ok = i == 0
                || !rest[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '/' || c == '.');
            let tail = &rest[i + prefix.len()..];
            let name: String = tail
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
                .collect();
            let name = name.trim_end_matches('.');
            if before_ok && (name.ends_with(".md") || (prefix == "examples/" && name.contains('.')))
            {
                out.push(format!("{prefix}{name}"));
            }
            rest = tail;
        }
    }
    out
}

#[test]
fn the_checker_finds_what_is_broken() {
    let dir = tempfile_dir();
    std::fs::write(
        dir.join("a.md"),
        "# Title\n## The supported PromQL subset\n",
    )
    .unwrap();
    let from = dir.join("b.md");
    let md = "see [a](a.md), [sub](a.md#the-supported-promql-subset), [web](https://x.org)\n\
              and [gone](promql.md), [bad anchor](a.md#nope), `[code](no.md)`\n";
    let broken = broken_links(&from, md);
    assert_eq!(broken.len(), 2, "{broken:#?}");
    assert!(
        broken[0].contains("(promql.md): no such file"),
        "{broken:#?}"
    );
    assert!(broken[1].contains("no heading #nope"), "{broken:#?}");
    // Spelt in two pieces so that this file does not name a missing doc itself.
    let gone = concat!("docs/", "promql.md");
    assert_eq!(
        named_paths(&format!(
            "fix: see the subset ({gone}), and examples/cutover.toml."
        )),
        [gone, "examples/cutover.toml"]
    );
    assert_eq!(named_paths("crates/x/docs/y.md"), Vec::<String>::new());
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cutover-docs-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_relative_markdown_link_resolves() {
    let root = repo();
    let mut mds = Vec::new();
    files(&root, ".md", &mut mds);
    assert!(mds.iter().any(|p| p.ends_with("docs/config.md")), "{mds:?}");
    let broken: Vec<String> = mds
        .iter()
        .flat_map(|p| broken_links(p, &std::fs::read_to_string(p).unwrap()))
        .collect();
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn every_doc_a_message_or_doc_names_exists() {
    let root = repo();
    let mut sources = Vec::new();
    files(&root.join("crates"), ".rs", &mut sources);
    files(&root, ".md", &mut sources);
    assert!(sources.len() > 20, "{sources:?}");
    let mut missing = Vec::new();
    for p in &sources {
        let text = std::fs::read_to_string(p).unwrap();
        for name in named_paths(&text) {
            if !root.join(&name).exists() {
                missing.push(format!("{}: {name}", p.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but missing:\n  {}",
        missing.join("\n  ")
    );
}
