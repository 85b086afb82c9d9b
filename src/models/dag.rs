//! The model DAG, from `ref()`s, and node selection (`--select`/`--exclude`).

use std::collections::{BTreeMap, BTreeSet};

use super::project::{ModelProject, suggest};
use super::render::Rendered;
use crate::error::{Error, Result};

/// Models and seeds with their edges. Seeds have no parents.
#[derive(Debug, Clone, Default)]
pub struct Dag {
    /// node → the nodes it refs.
    pub parents: BTreeMap<String, BTreeSet<String>>,
    /// node → the nodes that ref it.
    pub children: BTreeMap<String, BTreeSet<String>>,
    seeds: BTreeSet<String>,
}

impl Dag {
    /// Build the DAG from each model's first render. Unknown refs and cycles
    /// are errors naming the file and line.
    pub fn build(project: &ModelProject, rendered: &BTreeMap<String, Rendered>) -> Result<Dag> {
        let mut dag = Dag::default();
        let names: Vec<String> = project
            .models
            .iter()
            .map(|m| m.name.clone())
            .chain(project.seeds.iter().map(|s| s.name.clone()))
            .chain(project.snapshots.iter().map(|s| s.name.clone()))
            .collect();
        // Snapshots are built by `ferry snapshot` (after seeds, before
        // models): to the model DAG they are inputs, like seeds.
        for s in project
            .seeds
            .iter()
            .map(|s| &s.name)
            .chain(project.snapshots.iter().map(|s| &s.name))
        {
            dag.seeds.insert(s.clone());
            dag.parents.entry(s.clone()).or_default();
            dag.children.entry(s.clone()).or_default();
        }
        for m in &project.models {
            dag.parents.entry(m.name.clone()).or_default();
            dag.children.entry(m.name.clone()).or_default();
        }
        for m in &project.models {
            let Some(r) = rendered.get(&m.name) else {
                continue;
            };
            for reference in &r.refs {
                if !names.contains(&reference.name) && project.disabled.contains(&reference.name) {
                    return Err(Error::Input(format!(
                        "{}:{}: ref('{}') names a node that is disabled (+enabled or enabled: in its config); enable it, or disable this model too",
                        m.path, reference.line, reference.name
                    )));
                }
                if !names.contains(&reference.name) {
                    return Err(Error::Input(format!(
                        "{}:{}: ref('{}') names no model, seed or snapshot{}",
                        m.path,
                        reference.line,
                        reference.name,
                        suggest(&reference.name, &names)
                    )));
                }
                dag.parents
                    .entry(m.name.clone())
                    .or_default()
                    .insert(reference.name.clone());
                dag.children
                    .entry(reference.name.clone())
                    .or_default()
                    .insert(m.name.clone());
            }
        }
        if let Some(cycle) = dag.find_cycle() {
            return Err(Error::Input(format!(
                "models form a cycle: {}; a model cannot depend on itself, even through others",
                cycle.join(" -> ")
            )));
        }
        Ok(dag)
    }

    pub fn is_seed(&self, name: &str) -> bool {
        self.seeds.contains(name)
    }

    fn find_cycle(&self) -> Option<Vec<String>> {
        // 0 = unvisited, 1 = on stack, 2 = done.
        let mut state: BTreeMap<&str, u8> = BTreeMap::new();
        let mut stack: Vec<&str> = Vec::new();
        fn visit<'a>(
            dag: &'a Dag,
            n: &'a str,
            state: &mut BTreeMap<&'a str, u8>,
            stack: &mut Vec<&'a str>,
        ) -> Option<Vec<String>> {
            state.insert(n, 1);
            stack.push(n);
            for p in dag.parents.get(n).into_iter().flatten() {
                match state.get(p.as_str()).copied().unwrap_or(0) {
                    1 => {
                        let start = stack.iter().position(|s| *s == p.as_str()).unwrap_or(0);
                        // Edges point from a model to what it refs: a -> b reads "a refs b".
                        let mut cycle: Vec<String> =
                            stack[start..].iter().map(|s| s.to_string()).collect();
                        cycle.push(p.clone());
                        return Some(cycle);
                    }
                    0 => {
                        if let Some(c) = visit(dag, p, state, stack) {
                            return Some(c);
                        }
                    }
                    _ => {}
                }
            }
            stack.pop();
            state.insert(n, 2);
            None
        }
        for n in self.parents.keys() {
            if state.get(n.as_str()).copied().unwrap_or(0) == 0
                && let Some(c) = visit(self, n, &mut state, &mut stack)
            {
                return Some(c);
            }
        }
        None
    }

    /// All nodes in an order where parents come first (ties by name).
    pub fn topo_order(&self) -> Vec<String> {
        let mut indegree: BTreeMap<&str, usize> = self
            .parents
            .iter()
            .map(|(n, p)| (n.as_str(), p.len()))
            .collect();
        let mut ready: BTreeSet<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| *n)
            .collect();
        let mut out = Vec::new();
        while let Some(n) = ready.pop_first() {
            out.push(n.to_string());
            for c in self.children.get(n).into_iter().flatten() {
                if let Some(d) = indegree.get_mut(c.as_str()) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert(c.as_str());
                    }
                }
            }
        }
        out
    }

    fn walk(&self, start: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.to_string()];
        while let Some(n) = todo.pop() {
            for next in edges.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    }

    pub fn ancestors(&self, name: &str) -> BTreeSet<String> {
        self.walk(name, &self.parents)
    }

    pub fn descendants(&self, name: &str) -> BTreeSet<String> {
        self.walk(name, &self.children)
    }
}

/// Resolve `--select` / `--exclude` expressions to model names.
///
/// Syntax (as dbt): space-separated terms are unioned; comma-separated atoms
/// within a term are intersected. An atom is a model or seed name, `tag:x`
/// or `path:models/marts` (a folder or file), with `+` before it for its
/// ancestors and/or after it for its descendants. No `--select` means every
/// node.
pub fn select(
    project: &ModelProject,
    dag: &Dag,
    select: &[String],
    exclude: &[String],
) -> Result<BTreeSet<String>> {
    let all: BTreeSet<String> = dag.parents.keys().cloned().collect();
    let mut chosen = if select.iter().all(|s| s.trim().is_empty()) {
        all.clone()
    } else {
        expr(project, dag, select, &all)?
    };
    if !exclude.iter().all(|s| s.trim().is_empty()) {
        for n in expr(project, dag, exclude, &all)? {
            chosen.remove(&n);
        }
    }
    Ok(chosen)
}

fn expr(
    project: &ModelProject,
    dag: &Dag,
    args: &[String],
    all: &BTreeSet<String>,
) -> Result<BTreeSet<String>> {
    let mut union = BTreeSet::new();
    for term in args.iter().flat_map(|a| a.split_whitespace()) {
        let mut inter: Option<BTreeSet<String>> = None;
        for atom in term.split(',').filter(|a| !a.is_empty()) {
            let set = atom_set(project, dag, atom, all)?;
            inter = Some(match inter {
                None => set,
                Some(prev) => prev.intersection(&set).cloned().collect(),
            });
        }
        union.extend(inter.unwrap_or_default());
    }
    Ok(union)
}

fn atom_set(
    project: &ModelProject,
    dag: &Dag,
    atom: &str,
    all: &BTreeSet<String>,
) -> Result<BTreeSet<String>> {
    let up = atom.starts_with('+');
    let down = atom.ends_with('+') && atom.len() > 1;
    let core = atom.trim_start_matches('+').trim_end_matches('+');
    for prefix in ["tag:", "path:"] {
        if core == prefix {
            return Err(Error::Input(format!(
                "--select {atom}: `{prefix}` names nothing; write {prefix}<name>, for example {}",
                if prefix == "tag:" {
                    "tag:nightly"
                } else {
                    "path:models/marts"
                }
            )));
        }
    }
    let base: BTreeSet<String> = if let Some(tag) = core.strip_prefix("tag:") {
        project
            .models
            .iter()
            .filter(|m| m.config.tags.iter().any(|t| t == tag))
            .map(|m| m.name.clone())
            .collect()
    } else if let Some(path) = core.strip_prefix("path:") {
        let path = path.trim_end_matches('/');
        project
            .models
            .iter()
            .filter(|m| {
                m.path == path
                    || m.path.starts_with(&format!("{path}/"))
                    || m.path.trim_end_matches(".sql") == path
            })
            .map(|m| m.name.clone())
            .collect()
    } else if let Some(set) = project.selector_sets.get(core) {
        set.clone()
    } else if core.starts_with("state:") {
        return Err(Error::Input(format!(
            "selector {atom:?} needs --state DIR: the target/ folder (with manifest.json) of the run to compare with"
        )));
    } else if all.contains(core) {
        BTreeSet::from([core.to_string()])
    } else if let Some(pkg) = core.strip_prefix("package:").or_else(|| {
        project
            .models
            .iter()
            .any(|m| m.package.as_deref() == Some(core))
            .then_some(core)
    }) {
        // `package:dbt_utils` or the package's bare name, as in dbt.
        let own = project.namespaces.last().map(|(n, _)| n.as_str());
        project
            .models
            .iter()
            .filter(|m| {
                m.package.as_deref() == Some(pkg) || (m.package.is_none() && own == Some(pkg))
            })
            .map(|m| m.name.clone())
            .collect()
    } else {
        return Err(Error::Input(format!(
            "selector {atom:?}: no model or seed is named {core:?}{}",
            suggest(core, all.iter())
        )));
    };
    let mut out = base.clone();
    for n in &base {
        if up {
            out.extend(dag.ancestors(n));
        }
        if down {
            out.extend(dag.descendants(n));
        }
    }
    Ok(out)
}
