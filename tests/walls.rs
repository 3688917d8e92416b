//! The walls between rooms, checked from the sources: every `crate::<room>` a room names must be
//! allowed by the table in `docs/architecture.md`, and no two rooms may import each other, even
//! through others. The table is the documentation and the rule at once, so neither drifts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The top-level modules of `src` (files and directories), except the crate roots.
fn rooms() -> BTreeSet<String> {
    std::fs::read_dir(root().join("src"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let room = name.strip_suffix(".rs").unwrap_or(&name).to_owned();
            (room != "lib" && room != "main").then_some(room)
        })
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The rooms named by `crate::room` paths and `use crate::{room, …}` groups in `text`, outside
/// its `#[cfg(test)]` module (tests may reach anywhere).
fn named_rooms(text: &str, rooms: &BTreeSet<String>) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|s| s.trim().split("::").next().unwrap_or_default())
                .collect()
        } else {
            vec![
                rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default(),
            ]
        };
        found.extend(
            names
                .into_iter()
                .filter(|n| rooms.contains(*n))
                .map(str::to_owned),
        );
    }
    found
}

fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let rooms = rooms();
    rooms
        .iter()
        .map(|room| {
            // A room is `src/<room>.rs`, `src/<room>/`, or both.
            let dir = root().join("src").join(room);
            let file = root().join("src").join(format!("{room}.rs"));
            let mut files = Vec::new();
            if dir.is_dir() {
                sources(&dir, &mut files);
            }
            if file.is_file() {
                files.push(file);
            }
            let mut named = BTreeSet::new();
            for f in files {
                named.extend(named_rooms(&std::fs::read_to_string(f).unwrap(), &rooms));
            }
            named.remove(room);
            (room.clone(), named)
        })
        .collect()
}

/// The "may import" column of the rooms table: backticked room names; "all of the above" is every
/// room of an earlier row; "any room" is every room.
fn allowed() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let rooms = rooms();
    let mut above = BTreeSet::new();
    let mut table = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let room = cells[1].trim_matches('`').to_owned();
        let column = cells[3];
        let mut may: BTreeSet<String> = column
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .filter(|r| rooms.contains(r))
            .collect();
        if column.contains("all of the above") {
            may.extend(above.iter().cloned());
        }
        if column.contains("any room") {
            may.extend(rooms.iter().cloned());
        }
        above.insert(room.clone());
        table.insert(room, may);
    }
    table
}

#[test]
fn every_room_is_in_the_table_and_imports_only_what_it_may() {
    let table = allowed();
    let mut wrong = Vec::new();
    for (room, named) in imports() {
        let Some(may) = table.get(&room) else {
            wrong.push(format!(
                "{room} is not in docs/architecture.md's rooms table"
            ));
            continue;
        };
        for n in named.difference(may) {
            wrong.push(format!(
                "{room} imports {n}, which the table does not allow"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_two_rooms_import_each_other() {
    let graph = imports();
    // Kahn's algorithm: what cannot be ordered sits on a cycle.
    let mut indegree: BTreeMap<&str, usize> = graph.keys().map(|r| (r.as_str(), 0)).collect();
    for deps in graph.values() {
        for d in deps {
            *indegree.get_mut(d.as_str()).unwrap() += 1;
        }
    }
    let mut ready: Vec<&str> = indegree
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(r, _)| *r)
        .collect();
    let mut ordered = 0;
    while let Some(r) = ready.pop() {
        ordered += 1;
        for d in &graph[r] {
            let n = indegree.get_mut(d.as_str()).unwrap();
            *n -= 1;
            if *n == 0 {
                ready.push(d);
            }
        }
    }
    let cyclic: Vec<&str> = indegree
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, _)| *r)
        .collect();
    assert_eq!(ordered, graph.len(), "rooms on an import cycle: {cyclic:?}");
}

#[test]
fn the_parser_sees_grouped_and_nested_paths() {
    let rooms: BTreeSet<String> = ["chain", "ledger", "clock"]
        .map(str::to_owned)
        .into_iter()
        .collect();
    let found = named_rooms(
        "use crate::{chain::rpc, ledger};\nlet t = crate::clock::now_ms();\n#[cfg(test)]\nuse crate::x;",
        &rooms,
    );
    assert_eq!(found, rooms);
}
