fn main() -> std::process::ExitCode {
    umpath::cli::main()
}
