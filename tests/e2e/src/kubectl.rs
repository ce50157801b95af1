//! `kubectl` for a scenario: the cluster's environment, the `kubectl-cairn` plugin on PATH, a time
//! limit, and the exit code and output kept for the check (not turned into an error).

use crate::Scenario;

impl Scenario {
    /// `kubectl ARGS -n NS` with the cluster's environment and the plugin on PATH: (exit code,
    /// stdout, stderr).
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut all = args.to_vec();
        all.extend(["-n", &self.ns]);
        self.kubectl_env(&all, stdin, &[])
    }

    /// `kubectl ARGS` (no namespace added) with more environment: a `("NAME", "")` pair removes
    /// NAME. Ended after 5 minutes, so that a hanging command fails its check instead of the run.
    pub fn kubectl_env(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> (i32, String, String) {
        use std::io::Write;
        let mut command = self.setup.cluster.command("timeout");
        command
            .args(["300", "kubectl"])
            .args(args)
            .env("PATH", self.setup.plugin_path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            if v.is_empty() {
                command.env_remove(k);
            } else {
                command.env(k, v);
            }
        }
        if stdin.is_some() {
            command.stdin(std::process::Stdio::piped());
        }
        let Ok(mut child) = command.spawn() else {
            return (-1, String::new(), "kubectl could not be started".into());
        };
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let _ = pipe.write_all(text.as_bytes());
        }
        match child.wait_with_output() {
            Ok(out) => (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ),
            Err(e) => (-1, String::new(), e.to_string()),
        }
    }
}
