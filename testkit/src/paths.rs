//! Where the repository, the peer programs and their installed dependencies are.

use std::path::{Path, PathBuf};

use crate::Error;

/// Root of the ringcast repository (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit lives inside the repository").to_path_buf()
}

/// `peers/` in the repository.
pub fn peers_src_dir() -> PathBuf {
    repo_root().join("peers")
}

/// Install directory of the peers' Python venv (and Autobahn's venvs):
/// `$RINGCAST_PEERS_DIR`, else `$HOME/.cache/ringcast-peers`.
pub fn peers_install_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("RINGCAST_PEERS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("ringcast-peers")
}

/// The Python interpreter of the peers' venv (`<install dir>/venv-py3/bin/python`).
pub fn python_bin() -> PathBuf {
    peers_install_dir().join("venv-py3").join("bin").join("python")
}

/// The Chromium binary: `$RINGCAST_CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("RINGCAST_CHROMIUM")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// The `node` binary: `$RINGCAST_NODE`, else `node` from `PATH`.
pub fn node_bin() -> PathBuf {
    std::env::var_os("RINGCAST_NODE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"))
}

fn missing(what: &str, path: &Path) -> Error {
    Error::new(format!(
        "{what} is not installed ({} missing): run peers/setup.sh \
         (from the repository root: `bash peers/setup.sh`)",
        path.display()
    ))
}

/// Checks that the Python peer can run; the error says to run `peers/setup.sh`.
pub fn require_python() -> Result<PathBuf, Error> {
    let py = python_bin();
    if !py.exists() {
        return Err(missing("the Python websockets peer (venv)", &py));
    }
    Ok(py)
}

/// Checks that `node_modules/<package>` is installed in `peers/`.
pub fn require_node_package(package: &str) -> Result<(), Error> {
    let p = peers_src_dir().join("node_modules").join(package).join("package.json");
    if !p.exists() {
        return Err(missing(&format!("the npm package `{package}`"), &p));
    }
    Ok(())
}

/// Checks that Chromium is installed.
pub fn require_chromium() -> Result<PathBuf, Error> {
    let c = chromium_bin();
    if !c.exists() {
        return Err(Error::new(format!(
            "Chromium is not installed ({} missing): `apt-get install -y chromium`, \
             then run peers/setup.sh",
            c.display()
        )));
    }
    Ok(c)
}
