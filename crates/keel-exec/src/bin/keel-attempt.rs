//! The attempt supervisor on its own, for keel-exec's tests. The `keel` binary carries the same
//! supervisor as its hidden `__attempt` command, so a release ships one binary.

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(keel_exec::attempt_main(&arguments));
}
