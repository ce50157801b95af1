#[tokio::main]
async fn main() -> std::process::ExitCode {
    cairn_operator::cli::main().await
}
