//! `proxymesh`: the client command line. See `proxymesh --help`.

fn main() -> std::process::ExitCode {
    proxymesh_daemon::cli::main()
}
