//! OCI lifecycle hooks: each is a program run with the container's state as JSON on its
//! stdin, with its own arguments and environment, killed at its timeout. Docker's networking
//! (`libnetwork-setkey`) and most GPU and network plugins are hooks.
//!
//! Where they run: `prestart` and `createRuntime` in the runtime during `create`, once the
//! container's namespaces exist (the container process waits); `createContainer` in the
//! container process before it pivots into the root file system; `startContainer` in the
//! container process after `start`, before the VM boots; `poststart` in the runtime after
//! `start`; `poststop` in the runtime at `delete`.

use oci_spec::runtime::{ContainerState, Hook, State};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The longest a hook without a timeout of its own may run.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of a failed hook's output quoted in the error.
const MAX_QUOTED_OUTPUT: usize = 512;

/// Errors of [`run`].
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook could not be started.
    #[error("cannot run the {stage} hook {path}")]
    Spawn {
        /// Which hooks.
        stage: &'static str,
        /// The program.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The hook failed.
    #[error("the {stage} hook {path} failed ({status}){output}")]
    Failed {
        /// Which hooks.
        stage: &'static str,
        /// The program.
        path: PathBuf,
        /// Its exit status.
        status: String,
        /// What it printed, quoted.
        output: String,
    },
    /// The hook ran longer than its timeout.
    #[error("the {stage} hook {path} did not finish within {timeout:?}")]
    TimedOut {
        /// Which hooks.
        stage: &'static str,
        /// The program.
        path: PathBuf,
        /// Its timeout.
        timeout: Duration,
    },
}

/// The state a hook reads on its stdin.
pub fn state(
    id: &str,
    status: ContainerState,
    pid: i32,
    bundle: &Path,
    annotations: &HashMap<String, String>,
) -> State {
    let mut state = State::default();
    state.set_version(oci_spec::runtime::VERSION.to_owned());
    state.set_id(id.to_owned());
    state.set_status(status);
    state.set_pid(Some(pid));
    state.set_bundle(bundle.to_owned());
    state.set_annotations(Some(annotations.clone()));
    state
}

/// Runs `hooks` in order with `state` on their stdin; the first failure stops the rest.
pub fn run(stage: &'static str, hooks: Option<&[Hook]>, state: &State) -> Result<(), HookError> {
    let json = serde_json::to_vec(state).expect("the state serializes");
    for hook in hooks.unwrap_or_default() {
        run_one(stage, hook, &json)?;
    }
    Ok(())
}

fn run_one(stage: &'static str, hook: &Hook, state: &[u8]) -> Result<(), HookError> {
    let path = hook.path().clone();
    let timeout = hook
        .timeout()
        .filter(|t| *t > 0)
        .map_or(DEFAULT_HOOK_TIMEOUT, |t| Duration::from_secs(t as u64));
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(&path);
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear()
        .envs(
            hook.env()
                .iter()
                .flatten()
                .filter_map(|e| e.split_once('=')),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        stage,
        path: path.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin closes it: that is not a failure.
        let _ = stdin.write_all(state);
    }
    let pid = child.id();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match wait.recv_timeout(timeout) {
        Ok(Ok(output)) => output,
        Ok(Err(source)) => {
            return Err(HookError::Spawn {
                stage,
                path,
                source,
            });
        }
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(HookError::TimedOut {
                stage,
                path,
                timeout,
            });
        }
    };
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if text.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    let quoted = match text.char_indices().nth(MAX_QUOTED_OUTPUT) {
        Some((cut, _)) => format!(": {}…", &text[..cut]),
        None if text.is_empty() => String::new(),
        None => format!(": {text}"),
    };
    Err(HookError::Failed {
        stage,
        path,
        status: output.status.to_string(),
        output: quoted.replace('\n', " | "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    fn sample_state() -> State {
        state(
            "c1",
            ContainerState::Creating,
            42,
            Path::new("/bundle"),
            &HashMap::new(),
        )
    }

    fn hook(script: &str, timeout: Option<i64>) -> Hook {
        let mut builder = HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()])
            .env(vec!["GREETING=hi".to_owned()]);
        if let Some(t) = timeout {
            builder = builder.timeout(t);
        }
        builder.build().unwrap()
    }

    #[test]
    fn test_run_hook_reads_state_and_env() {
        let script = r#"read -r state; case "$state" in *'"pid":42'*) [ "$GREETING" = hi ];; *) exit 3;; esac"#;
        run("prestart", Some(&[hook(script, None)]), &sample_state()).unwrap();
    }

    #[test]
    fn test_run_failing_hook_quotes_its_stderr() {
        let err = run(
            "prestart",
            Some(&[hook("echo nope >&2; exit 2", None)]),
            &sample_state(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("nope") && text.contains("prestart"), "{text}");
    }

    #[test]
    fn test_run_slow_hook_times_out() {
        let err = run(
            "poststop",
            Some(&[hook("sleep 5", Some(1))]),
            &sample_state(),
        )
        .unwrap_err();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
    }
}
