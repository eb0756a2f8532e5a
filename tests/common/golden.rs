//! Golden files (`tests/golden/<name>`): outputs a person has reviewed by hand.

use super::repo;

/// The golden files a test compares its outputs with (`tests/golden/<name>`).
///
/// With UPDATE_GOLDEN=1 it rewrites each of them instead, and fails the test once all
/// are written: a rewrite compares nothing, so a run with UPDATE_GOLDEN set is never
/// green, and the next run without it checks the files it wrote.
pub struct Golden {
    update: bool,
    rewritten: Vec<String>,
}

impl Golden {
    pub fn new() -> Golden {
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        assert!(
            !(update && std::env::var("CI").as_deref() == Ok("true")),
            "UPDATE_GOLDEN is for local use"
        );
        Golden {
            update,
            rewritten: Vec::new(),
        }
    }

    /// Compares `actual` with the golden file `name`, or rewrites it.
    pub fn check(&mut self, name: &str, actual: &str) {
        let path = repo().join("tests/golden").join(name);
        if self.update {
            let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(actual);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            let how = if changed { "rewritten" } else { "unchanged" };
            self.rewritten.push(format!("{name} ({how})"));
            return;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
        assert_eq!(
            actual,
            want,
            "{} differs (UPDATE_GOLDEN=1 to accept)",
            path.display()
        );
    }
}

impl Drop for Golden {
    fn drop(&mut self) {
        if !self.rewritten.is_empty() && !std::thread::panicking() {
            panic!(
                "UPDATE_GOLDEN is set, so nothing was compared: wrote {}; review the diff, \
                 then run again without it",
                self.rewritten.join(", ")
            );
        }
    }
}
