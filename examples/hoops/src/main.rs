//! The `hoops` binary: see `hoops::cli`.

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(hoops::cli::main(&arguments));
}
