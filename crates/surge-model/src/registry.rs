//! What a worker serves: models by name, each in one or more versions. The one place
//! that knows which version is the newest (the one a job naming no version gets), so
//! no caller builds or parses `name@version` strings.

use std::collections::BTreeMap;

use crate::folder::compare_versions;
use crate::spec::ModelInfo;

/// Served models by name and version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    models: BTreeMap<String, BTreeMap<String, ModelInfo>>,
}

impl Registry {
    /// A registry of `infos`.
    pub fn of<'a>(infos: impl IntoIterator<Item = &'a ModelInfo>) -> Self {
        let mut r = Self::default();
        for i in infos {
            r.insert(i.clone());
        }
        r
    }

    /// Adds (or replaces) one version of a model.
    pub fn insert(&mut self, info: ModelInfo) {
        self.models
            .entry(info.name.clone())
            .or_default()
            .insert(info.version.clone(), info);
    }

    /// The version of `name` a job gets: `version` when given, else the newest.
    pub fn get(&self, name: &str, version: Option<&str>) -> Option<&ModelInfo> {
        let versions = self.models.get(name)?;
        match version {
            Some(v) => versions.get(v),
            None => versions
                .values()
                .max_by(|a, b| compare_versions(&a.version, &b.version)),
        }
    }

    /// Whether `name` is served in `version`.
    pub fn contains(&self, name: &str, version: &str) -> bool {
        self.get(name, Some(version)).is_some()
    }

    /// Whether any version of `name` is served.
    pub fn serves(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    /// The versions of `name` served, oldest first.
    pub fn versions(&self, name: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .models
            .get(name)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| compare_versions(a, b));
        v
    }

    /// The names served, sorted (one job queue each).
    pub fn names(&self) -> Vec<&str> {
        self.models.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::spec::InputSpec;

    fn info(name: &str, version: &str) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            version: version.into(),
            architecture: "mlp".into(),
            description: String::new(),
            input: InputSpec::Tabular {
                features: vec!["a".into()],
            },
            output_names: vec![],
            dir: PathBuf::new(),
        }
    }

    #[test]
    fn a_job_without_a_version_gets_the_newest_in_numeric_order() {
        let r = Registry::of(&[info("m", "1.9.0"), info("m", "1.10.0"), info("n", "1")]);
        assert_eq!(r.get("m", None).map(|i| i.version.as_str()), Some("1.10.0"));
        assert_eq!(
            r.get("m", Some("1.9.0")).map(|i| i.version.as_str()),
            Some("1.9.0")
        );
        assert!(r.get("m", Some("2")).is_none() && r.get("x", None).is_none());
        assert_eq!(r.versions("m"), ["1.9.0", "1.10.0"]);
        assert_eq!(r.names(), ["m", "n"]);
        assert!(r.contains("n", "1") && r.serves("m") && !r.serves("m@1.9.0"));
    }
}
