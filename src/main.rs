fn main() -> std::process::ExitCode {
    modelcrypt::cli::run()
}
