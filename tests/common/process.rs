//! The `protogate` binary as a child process, for what only the command
//! line shows: flags, exit codes, the diagnostic log.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

/// `protogate` run from the repository root, with no input.
pub fn protogate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_protogate"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null());
    command
}

/// Kills the child on drop so a failed assertion leaves no process behind.
pub struct Child(pub std::process::Child);

impl Child {
    /// Stops the child and returns what it wrote to its (piped) stderr.
    pub fn stop(mut self) -> String {
        let mut stderr = self.0.stderr.take().expect("stderr is piped");
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GETs `url` until the server answers (10 s at most).
pub async fn wait_for(url: &str) -> reqwest::Response {
    for _ in 0..100 {
        if let Ok(response) = reqwest::get(url).await {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
