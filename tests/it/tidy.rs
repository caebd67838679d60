//! The layer rule of ARCHITECTURE.md, checked against the code's own `crate::` paths: the
//! table in its "Layers" section is what this test reads, so the document and the code
//! cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::copy_tree;

/// One row of the layer table.
#[derive(Debug)]
struct Layer {
    number: u32,
    name: String,
    /// Whether the modules of this layer may use each other.
    siblings: bool,
}

/// The layer table: each library module with its layer.
fn layer_table(architecture: &str) -> BTreeMap<String, Layer> {
    let section = architecture
        .split("\n## ")
        .find(|section| section.starts_with("Layers"))
        .expect("ARCHITECTURE.md has a \"## Layers\" section");
    let mut modules = BTreeMap::new();
    for row in section.lines().filter(|line| line.starts_with('|')) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let Some((number, name)) = cells[0].split_once(' ') else { continue };
        let Ok(number) = number.parse::<u32>() else { continue };
        let siblings = !cells[2].contains("never each other");
        for module in cells[1].split('`').skip(1).step_by(2) {
            let layer = Layer { number, name: name.to_owned(), siblings };
            assert!(modules.insert(module.to_owned(), layer).is_none(), "`{module}` is in two rows of the layer table");
        }
    }
    assert!(!modules.is_empty(), "the layer table has no rows");
    modules
}

/// Every library source file (the binary's `main.rs` and `cli/` are not the library's).
fn library_files(src: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut directories = vec![src.to_owned()];
    while let Some(directory) = directories.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(src).unwrap();
            if relative == Path::new("cli") || relative == Path::new("main.rs") {
                continue;
            }
            if path.is_dir() {
                directories.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a file belongs to: `store` for `src/store/sqlite/carts.rs`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// A line of code and its number.
type Line<'a> = (usize, &'a str);

/// A file's code, comments left out, split into what runs and its tests: by the house
/// style a file's `#[cfg(test)]` items come last.
fn code_of(text: &str) -> (Vec<Line<'_>>, Vec<Line<'_>>) {
    let lines = text.lines().enumerate().map(|(index, line)| (index + 1, line));
    let code: Vec<Line<'_>> = lines.filter(|(_, line)| !line.trim_start().starts_with("//")).collect();
    let split = code.iter().position(|(_, line)| *line == "#[cfg(test)]").unwrap_or(code.len());
    let (runtime, tests) = code.split_at(split);
    (runtime.to_vec(), tests.to_vec())
}

/// The modules a line names as `crate::module`.
fn uses(line: &str) -> Vec<String> {
    line.match_indices("crate::")
        .filter(|(at, _)| !line[..*at].ends_with('$') && !line[..*at].ends_with(char::is_alphanumeric))
        .map(|(at, _)| {
            line[at + "crate::".len()..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect()
        })
        .filter(|module: &String| !module.is_empty())
        .collect()
}

/// Where the module graph has a cycle, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

/// The problems of the library at `root` under the layer rule, one message each.
fn layer_problems(root: &Path) -> Vec<String> {
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let layers = layer_table(&architecture);
    let src = root.join("src");
    let mut problems = Vec::new();
    let declared: BTreeSet<String> = std::fs::read_to_string(src.join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod ").map(|name| name.trim_end_matches(';').to_owned()))
        .collect();
    for module in declared.iter().filter(|module| !layers.contains_key(*module)) {
        problems
            .push(format!("src/lib.rs declares `{module}`, which the layer table of ARCHITECTURE.md does not place"));
    }
    for module in layers.keys().filter(|module| !declared.contains(*module)) {
        problems.push(format!("ARCHITECTURE.md places `{module}`, which src/lib.rs does not declare"));
    }

    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in library_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        let from = module_of(&src, &file);
        let shown = file.strip_prefix(root).unwrap().display().to_string();
        let (runtime, tests) = code_of(&text);
        for (number, line) in runtime.iter().chain(&tests) {
            let is_runtime = runtime.iter().any(|(at, _)| at == number);
            if line.contains("cartwatch_simulator") {
                problems.push(format!(
                    "{shown}:{number} names the simulator crate; the library never depends on its tools"
                ));
            }
            if is_runtime && line.contains("Utc::now()") && !CLOCK_EXCEPTIONS.iter().any(|allowed| shown == *allowed) {
                problems.push(format!(
                    "{shown}:{number} reads the system clock; runtime code takes the time from the injected `Clock`"
                ));
            }
            for to in uses(line) {
                if to == from {
                    continue;
                }
                let (Some(own), Some(other)) = (layers.get(&from), layers.get(&to)) else {
                    if layers.contains_key(&from) {
                        problems.push(format!("{shown}:{number} uses `crate::{to}`, which is not a library module"));
                    }
                    continue;
                };
                let allowed = other.number < own.number || other.number == own.number && own.siblings;
                if !allowed {
                    let rule = if other.number == own.number {
                        format!("the {} of layer {} never use each other", own.name, own.number)
                    } else {
                        format!("a module uses only its own layer and those below ({} is layer {})", to, other.number)
                    };
                    problems.push(format!(
                        "{shown}:{number}: `{from}` (layer {} {}) uses `{to}` (layer {} {}): {rule} (ARCHITECTURE.md, Layers)",
                        own.number, own.name, other.number, other.name
                    ));
                }
                if is_runtime {
                    graph.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!("the modules import each other in a cycle: {}", cycle.join(" -> ")));
    }
    problems
}

/// Runtime files that may read the wall clock, and why: the clock itself, and the webhook
/// signature's timestamp, which receivers compare with their own wall clock.
const CLOCK_EXCEPTIONS: [&str; 2] = ["src/clock.rs", "src/sinks/webhook.rs"];

#[test]
fn every_import_keeps_the_layer_rule_and_the_modules_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let problems = layer_problems(root);
    assert!(problems.is_empty(), "the layer rule is broken:\n  {}", problems.join("\n  "));
}

#[test]
fn the_simulator_crate_does_not_depend_on_the_library() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("crates/simulator/Cargo.toml")).unwrap();
    let dependencies = manifest.split("[dependencies]").nth(1).unwrap_or_default();
    assert!(
        !dependencies.lines().any(|line| line.trim_start().starts_with("cartwatch ")),
        "crates/simulator depends on cartwatch; a fake written from the documents must not share its code"
    );
}

/// The check itself is tested on a copy of the tree with a forbidden import added: a store
/// file that uses a sink.
#[test]
fn a_forbidden_import_is_named_with_its_file_and_rule() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(root.join("ARCHITECTURE.md"), copy.path().join("ARCHITECTURE.md")).unwrap();
    copy_tree(&root.join("src"), &copy.path().join("src"));
    let carts = copy.path().join("src/store/sqlite/carts.rs");
    let text = std::fs::read_to_string(&carts).unwrap();
    std::fs::write(
        &carts,
        text.replacen("use super::SqliteStore;", "use super::SqliteStore;\nuse crate::sinks::Sink;", 1),
    )
    .unwrap();
    let problems = layer_problems(copy.path());
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("src/store/sqlite/carts.rs:")
            && problems[0].contains("`store` (layer 2 components) uses `sinks` (layer 2 components)")
            && problems[0].contains("never use each other"),
        "{}",
        problems[0]
    );

    // An upward import, and a cycle it makes.
    std::fs::write(
        &carts,
        text.replacen("use super::SqliteStore;", "use super::SqliteStore;\nuse crate::sweep::Poller;", 1),
    )
    .unwrap();
    let problems = layer_problems(copy.path());
    assert!(
        problems.iter().any(|problem| problem.contains("`store` (layer 2 components) uses `sweep` (layer 3")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|problem| problem.starts_with("the modules import each other in a cycle")),
        "{problems:#?}"
    );
}
