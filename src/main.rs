use std::process::ExitCode;

fn main() -> ExitCode {
    session_steward::cli::main()
}
