use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use wahook::{calibrate, config::Config, ingest::signature, loadgen, store, telemetry};

// The ack path allocates per request (headers, JSON, statements); glibc malloc was ~15% of
// server CPU under load in the intake benchmark.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Signed WhatsApp webhooks in, a durable inbox, and a database out.
#[derive(Parser)]
#[command(name = "wahook", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (the default).
    Serve,
    /// Run the database migrations and exit.
    Migrate,
    /// Print the effective configuration with every secret redacted; with --check, only
    /// validate it (exit 0 or 1, the database untouched).
    Config {
        /// Validate and exit 0 (valid) or 1 (the errors, each naming its key and origin).
        #[arg(long)]
        check: bool,
        /// The file to use instead of the one WAHOOK_CONFIG names.
        file: Option<PathBuf>,
    },
    /// Print the signature header value for a body file (use it with curl).
    Sign {
        /// The account's app secret (Meta) or Kapso webhook secret.
        #[arg(long)]
        secret: String,
        /// Print Kapso's bare-hex `X-Webhook-Signature` instead of Meta's `sha256=…`.
        #[arg(long)]
        kapso: bool,
        /// The exact body bytes that will be sent.
        file: PathBuf,
    },
    /// Send signed, realistic Meta webhooks at a server and report throughput and latency.
    Loadgen(loadgen::Args),
    /// Measure this machine's limit for wahook's own database writes (the inbox's group commit
    /// and the store's transaction), with nothing else running; see BENCHMARKS.md.
    Calibrate(calibrate::Args),
    /// Print the operator API's OpenAPI 3.1 document (what `/api/v1/openapi.json` serves).
    Openapi,
    /// Operator API users (bootstrap the first admin here).
    #[command(subcommand)]
    User(UserCommand),
    /// Operator API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Message templates.
    #[command(subcommand)]
    Templates(TemplatesCommand),
}

#[derive(Subcommand)]
enum TemplatesCommand {
    /// Read every page of the catalog of each account's WhatsApp Business Account (its
    /// `waba_id` and Graph token) from the Graph API into the database.
    Sync,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user (and its workspace if missing) and print a first API token for it.
    Create {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        /// admin, operator or viewer.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for a user (by email) and print it (shown once).
    Create {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Revoke a token by id.
    Revoke {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        id: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Openapi => match wahook::http::api::openapi().to_pretty_json() {
            Ok(doc) => {
                println!("{doc}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("openapi: {e}")),
        },
        Command::Sign {
            secret,
            kapso,
            file,
        } => match std::fs::read(&file) {
            Ok(body) => {
                if kapso {
                    println!("{}", signature::sign_hex(secret.as_bytes(), &body));
                } else {
                    println!("{}", signature::meta_header(secret.as_bytes(), &body));
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("cannot read {}: {e}", file.display())),
        },
        Command::Calibrate(args) => match Config::load() {
            Ok(config) => runtime().block_on(async {
                match calibrate::run(config, args).await {
                    Ok(line) => {
                        println!("{line}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(format!("{e:#}")),
                }
            }),
            Err(e) => fail(e.to_string()),
        },
        Command::Loadgen(args) => runtime().block_on(async {
            match loadgen::run(args).await {
                Ok(report) => {
                    // A closed stdout (`| head`) is not an error of the run.
                    use std::io::Write;
                    let _ = writeln!(std::io::stdout(), "{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("{e:#}")),
            }
        }),
        Command::Config { check, file } => {
            let loaded = match &file {
                Some(file) => Config::load_file(file),
                None => Config::load(),
            };
            match (loaded, check) {
                (Err(e), _) => fail(e.to_string()),
                (Ok(_), true) => {
                    let source = file
                        .map(|f| f.display().to_string())
                        .or_else(|| std::env::var("WAHOOK_CONFIG").ok())
                        .unwrap_or_else(|| "defaults".into());
                    println!("configuration OK ({source} and the environment)");
                    ExitCode::SUCCESS
                }
                (Ok(config), false) => {
                    print!("{}", config.redacted_toml());
                    ExitCode::SUCCESS
                }
            }
        }
        command => {
            let config = match Config::load() {
                Ok(c) => c,
                Err(e) => return fail(e.to_string()),
            };
            match command {
                Command::User(cmd) => runtime().block_on(people(&config, Err(cmd))),
                Command::Token(cmd) => runtime().block_on(people(&config, Ok(cmd))),
                Command::Templates(TemplatesCommand::Sync) => runtime().block_on(async {
                    telemetry::init(&config.log);
                    match wahook::sync_templates(&config).await {
                        Ok(s) => {
                            println!(
                                "{} templates from {} WhatsApp Business Accounts ({} pages); {} no longer listed",
                                s.templates, s.accounts, s.pages, s.gone
                            );
                            for e in &s.errors {
                                eprintln!("error: {e}");
                            }
                            if s.errors.is_empty() {
                                ExitCode::SUCCESS
                            } else {
                                ExitCode::FAILURE
                            }
                        }
                        Err(e) => fail(format!("templates sync: {e:#}")),
                    }
                }),
                Command::Migrate => runtime().block_on(async {
                    telemetry::init(&config.log);
                    let result = async {
                        let db = store::connect(&config.database).await?;
                        store::migrate(&db).await
                    }
                    .await;
                    match result {
                        Ok(()) => {
                            println!("migrations applied");
                            ExitCode::SUCCESS
                        }
                        Err(e) => fail(format!("migrate: {e}")),
                    }
                }),
                _ => runtime().block_on(async {
                    telemetry::init(&config.log);
                    match wahook::run(config, None).await {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => fail(format!("{e:#}")),
                    }
                }),
            }
        }
    }
}

/// `wahook user …` / `wahook token …`: straight to the database (the audit log names the CLI).
async fn people(config: &Config, cmd: Result<TokenCommand, UserCommand>) -> ExitCode {
    use wahook::store::{accounts, tokens, users};
    const ACTOR: &str = "cli";
    let result: anyhow::Result<String> = async {
        let db = store::connect(&config.database).await?;
        store::migrate(&db).await?;
        match cmd {
            Err(UserCommand::Create {
                workspace,
                name,
                email,
                role,
            }) => {
                let role = users::Role::parse(&role)
                    .ok_or_else(|| anyhow::anyhow!("--role must be admin, operator or viewer"))?;
                let ws = accounts::ensure_workspace(&db, &workspace).await?;
                let new = users::NewUser {
                    workspace_id: ws,
                    name: &name,
                    email: &email,
                    role,
                    is_active: true,
                };
                let user = users::create(&db, new, ACTOR).await?;
                let (_, token) = tokens::create(&db, ws, user.id, "bootstrap", ACTOR).await?;
                Ok(format!(
                    "user {} created ({}, {}); API token (shown once):\n{token}",
                    user.id, user.email, user.role
                ))
            }
            Ok(TokenCommand::Create {
                workspace,
                email,
                name,
            }) => {
                let ws = accounts::ensure_workspace(&db, &workspace).await?;
                let email = users::normalize_email(&email)?;
                let user = users::list(&db, ws, Some(&email), None, 200)
                    .await?
                    .into_iter()
                    .find(|u| u.email == email && u.is_active)
                    .ok_or_else(|| {
                        anyhow::anyhow!("no active user {email} in workspace {workspace}")
                    })?;
                let (row, token) = tokens::create(&db, ws, user.id, &name, ACTOR).await?;
                Ok(format!(
                    "token {} for {} (shown once):\n{token}",
                    row.id, user.email
                ))
            }
            Ok(TokenCommand::Revoke { workspace, id }) => {
                let ws = accounts::ensure_workspace(&db, &workspace).await?;
                if tokens::revoke(&db, ws, id, ACTOR).await? {
                    Ok(format!(
                        "token {id} revoked (a running server stops accepting it within 30 s)"
                    ))
                } else {
                    Err(anyhow::anyhow!(
                        "no active token {id} in workspace {workspace}"
                    ))
                }
            }
        }
    }
    .await;
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

fn fail(message: String) -> ExitCode {
    eprintln!("wahook: {message}");
    ExitCode::FAILURE
}
