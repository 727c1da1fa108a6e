//! `lamina keys add|list|revoke`: the API keys file of `lamina node --api-keys`.
//!
//! `add` prints the new key once, on stdout, and stores only its blake3 hash. The file is
//! written whole to a temporary file (mode 0600) and renamed into place, so a node that
//! re-reads it never sees half a file.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use rand::RngCore;

use crate::api::keys::{key_from_bytes, KeysFile, Limits, KEY_BYTES};
use crate::cli::{KeysCommand, OutputFormat};

pub fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Add {
            file,
            name,
            rpm,
            tokens_per_day,
            concurrent,
        } => {
            let mut keys = read_or_new(&file)?;
            let mut random = [0u8; KEY_BYTES];
            rand::rng().fill_bytes(&mut random);
            let key = key_from_bytes(&random);
            let limits = Limits {
                rpm,
                tokens_per_day,
                concurrent,
            };
            keys.add(&name, &key, limits, crate::ids::unix_secs())?;
            write(&file, &keys)?;
            eprintln!(
                "added key `{name}` to {} (shown once; only its hash is stored):",
                file.display()
            );
            let mut out = std::io::stdout();
            writeln!(out, "{key}")?;
            out.flush()?;
            Ok(())
        }
        KeysCommand::List { file, format } => {
            let keys = read(&file)?;
            match format {
                OutputFormat::Json => {
                    let list: Vec<_> = keys
                        .keys
                        .iter()
                        .map(|k| {
                            serde_json::json!({
                                "name": k.name,
                                "limits": k.limits,
                                "created": k.created,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(list));
                }
                OutputFormat::Text => {
                    let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
                    println!(
                        "{:<24} {:>8} {:>14} {:>10}",
                        "NAME", "RPM", "TOKENS/DAY", "CONCURRENT"
                    );
                    for k in &keys.keys {
                        println!(
                            "{:<24} {:>8} {:>14} {:>10}",
                            k.name,
                            show(k.limits.rpm.map(u64::from)),
                            show(k.limits.tokens_per_day),
                            show(k.limits.concurrent.map(u64::from)),
                        );
                    }
                }
            }
            Ok(())
        }
        KeysCommand::Revoke { file, name } => {
            let mut keys = read(&file)?;
            keys.revoke(&name)?;
            write(&file, &keys)?;
            eprintln!("revoked key `{name}` in {}", file.display());
            Ok(())
        }
    }
}

fn read(file: &Path) -> anyhow::Result<KeysFile> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the keys file {}", file.display()))?;
    KeysFile::parse(&text).with_context(|| format!("keys file {}", file.display()))
}

fn read_or_new(file: &Path) -> anyhow::Result<KeysFile> {
    if file.exists() {
        read(file)
    } else {
        Ok(KeysFile::new())
    }
}

fn write(file: &Path, keys: &KeysFile) -> anyhow::Result<()> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(keys.to_text().as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))?;
    Ok(())
}
