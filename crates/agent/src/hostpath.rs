//! Lexical checks of host-given paths, shared by the storage and device modules (a leaf: it
//! imports neither).

use std::path::{Component, Path, PathBuf};

use crate::error::{AgentError, Result};

/// Checks a host-supplied path lexically: non-empty, absolute, no NUL byte, no `..`.
/// Returns it with `.` components and repeated or trailing slashes removed.
pub fn clean_absolute(what: &str, path: &str) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(AgentError::invalid_argument(format!("{what} is empty")));
    }
    if path.contains('\0') {
        return Err(AgentError::invalid_argument(format!(
            "{what} {path:?} contains a NUL byte"
        )));
    }
    if !path.starts_with('/') {
        return Err(AgentError::invalid_argument(format!(
            "{what} {path:?} is not an absolute path"
        )));
    }
    let mut out = PathBuf::from("/");
    for comp in Path::new(path).components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(AgentError::invalid_argument(format!(
                    "{what} {path:?} contains \"..\""
                )))
            }
        }
    }
    Ok(out)
}
