//! `ember embed MODEL.ember [TEXT ...] [--file F] [--tokenizer tokenizer.json] [--json]`: sentences
//! in, embeddings out, on this device: the model's own tokenizer (a `tokenizer.json` embedded by
//! `quantize --tokenizer`, or given here), padded and truncated to the model's sequence length,
//! run in the compiled batch sizes, then the embedding output (a sentence embedding `[N, D]`, or
//! token embeddings `[N, S, D]` mean-pooled over the attention mask).

use anyhow::{bail, Context, Result};
use clap::Parser;
use ember_quantize::{report::metrics, HostTensor};
use ember_runtime::{DType, FileBytes, Model};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Name of the tensor that holds an embedded `tokenizer.json` (`quantize --tokenizer`).
pub const TOKENIZER_TENSOR: &str = "tokenizer.json";

/// Turn sentences into embeddings with a text model (BERT-class, e.g. MiniLM).
#[derive(Parser, Debug)]
pub struct Args {
    pub model: PathBuf,
    /// Sentences (or use --file).
    pub text: Vec<String>,
    /// One sentence per line ("-": standard input); empty lines are skipped.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The model's tokenizer.json (default: the one embedded in the model, else tokenizer.json
    /// beside it).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// The output to read (default: the last output with one axis per sample, else the first
    /// with two, mean-pooled over the attention mask).
    #[arg(long = "output-name")]
    pub output_name: Option<String>,
    /// Scale each embedding to unit length.
    #[arg(long)]
    pub normalize: bool,
    #[command(flatten)]
    pub engine: super::EngineArgs,
    /// Print JSON: the token ids and the embedding of every sentence, and their cosine
    /// similarities.
    #[arg(long)]
    pub json: bool,
}

/// The tokenizer bytes: `--tokenizer`, else embedded in the model, else beside the model.
fn tokenizer_bytes(a: &Args, model: &Model<FileBytes>) -> Result<(Vec<u8>, String)> {
    if let Some(p) = &a.tokenizer {
        return Ok((super::read(p)?, p.display().to_string()));
    }
    if let Some(t) = model.tensors.iter().find(|t| t.name == TOKENIZER_TENSOR) {
        return Ok((model.tensor_bytes(t).to_vec(), "embedded in the model".into()));
    }
    let beside = a.model.with_file_name("tokenizer.json");
    if beside.exists() {
        return Ok((super::read(&beside)?, beside.display().to_string()));
    }
    bail!(
        "{} has no tokenizer: pass --tokenizer tokenizer.json, or embed one with `quantize --tokenizer`",
        a.model.display()
    )
}

/// Parses a `tokenizer.json` (a clear error when it is not one).
pub fn parse_tokenizer(bytes: &[u8], what: &str) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_bytes(bytes)
        .map_err(|e| anyhow::anyhow!("{what} is not a usable tokenizer.json: {e}"))
}

fn sentences(a: &Args) -> Result<Vec<String>> {
    let mut out = a.text.clone();
    if let Some(f) = &a.file {
        let lines: Vec<String> = if f.as_os_str() == "-" {
            std::io::stdin().lock().lines().collect::<Result<_, _>>()?
        } else {
            let text = String::from_utf8(super::read(f)?)
                .with_context(|| format!("{} is not UTF-8 text", f.display()))?;
            text.lines().map(String::from).collect()
        };
        out.extend(lines.into_iter().filter(|l| !l.trim().is_empty()));
    }
    if out.is_empty() {
        bail!("no sentences: give them as arguments or with --file");
    }
    Ok(out)
}

/// What each model input is fed from the tokenizer.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    Ids,
    Mask,
    TypeIds,
}

/// Token ids (truncated to `seq`, special tokens added) of each sentence, and the padding id.
pub fn tokenize(
    tok: &mut tokenizers::Tokenizer,
    sents: &[String],
    seq: usize,
) -> Result<(Vec<Vec<u32>>, u32)> {
    let pad_id = tok.get_padding().map(|p| p.pad_id).unwrap_or(0);
    let mut tr = tok.get_truncation().cloned().unwrap_or_default();
    tr.max_length = seq;
    tok.with_truncation(Some(tr)).map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
    tok.with_padding(None);
    let ids = sents
        .iter()
        .map(|s| {
            let e = tok
                .encode(s.as_str(), true)
                .map_err(|e| anyhow::anyhow!("tokenizing \"{s}\": {e}"))?;
            Ok(e.get_ids().to_vec())
        })
        .collect::<Result<_>>()?;
    Ok((ids, pad_id))
}

pub fn run(a: Args) -> Result<()> {
    let model = super::load(&a.model)?;
    let sents = sentences(&a)?;
    let (bytes, from) = tokenizer_bytes(&a, &model)?;
    let mut tok = parse_tokenizer(&bytes, &format!("the tokenizer ({from})"))?;
    // Each input is a token sequence of the model's fixed length.
    let mut feeds = vec![];
    let mut seq = None;
    for s in &model.inputs {
        let feed = match s.name.as_str() {
            n if n.contains("input_ids") => Feed::Ids,
            n if n.contains("attention_mask") => Feed::Mask,
            n if n.contains("token_type_ids") => Feed::TypeIds,
            n => bail!(
                "model input '{n}' is not a tokenizer output (input_ids, attention_mask or token_type_ids): is this a text model?"
            ),
        };
        if s.dims.len() != 1 || !matches!(s.dtype, DType::I64 | DType::I32) {
            bail!(
                "model input '{}' is {:?} {:?}, expected integer [N, S]",
                s.name,
                s.dtype,
                s.dims
            );
        }
        if seq.is_some_and(|q| q != s.dims[0]) {
            bail!("the model's token inputs have different lengths");
        }
        seq = Some(s.dims[0]);
        feeds.push((s.name.clone(), feed));
    }
    let seq = seq.context("the model has no inputs")?;
    let (ids, pad_id) = tokenize(&mut tok, &sents, seq)?;
    let n = sents.len();
    let mut inputs = HashMap::new();
    for (name, feed) in &feeds {
        let mut v = vec![if *feed == Feed::Ids { pad_id as i64 } else { 0 }; n * seq];
        for (row, t) in v.chunks_exact_mut(seq).zip(&ids) {
            for (o, id) in row.iter_mut().zip(t) {
                *o = match feed {
                    Feed::Ids => *id as i64,
                    Feed::Mask => 1,
                    Feed::TypeIds => 0,
                };
            }
        }
        inputs.insert(name.clone(), HostTensor::i64(vec![n, seq], v));
    }
    // The embedding output.
    let out = match &a.output_name {
        Some(o) => model.outputs.iter().find(|s| &s.name == o).with_context(|| {
            let names: Vec<&str> = model.outputs.iter().map(|s| s.name.as_str()).collect();
            format!("the model has no output '{o}' (outputs: {})", names.join(", "))
        })?,
        None => model
            .outputs
            .iter()
            .rev()
            .find(|s| s.dims.len() == 1)
            .or_else(|| model.outputs.iter().find(|s| s.dims.len() == 2))
            .context("the model has no [N, D] or [N, S, D] output to read embeddings from")?,
    };
    if out.dtype != DType::F32 || !(1..=2).contains(&out.dims.len()) {
        bail!(
            "output '{}' is {:?} {:?}, expected f32 [N, D] or [N, S, D]",
            out.name,
            out.dtype,
            out.dims
        );
    }
    let gpu = super::device(&a.engine.device)?;
    let t0 = std::time::Instant::now();
    let outs = super::run::run_on(&model, &a.model, &inputs, n, a.engine.threads, gpu.as_ref())?;
    let secs = t0.elapsed().as_secs_f64();
    let v = outs[&out.name].to_f32_vec();
    let d = *out.dims.last().unwrap_or(&1);
    let mut emb: Vec<Vec<f32>> = if out.dims.len() == 1 {
        v.chunks_exact(d).map(|r| r.to_vec()).collect()
    } else {
        let s = out.dims[0];
        v.chunks_exact(s * d).zip(&ids).map(|(x, t)| mean_pool(x, d, t.len().min(s))).collect()
    };
    if a.normalize {
        for e in emb.iter_mut() {
            let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                e.iter_mut().for_each(|x| *x /= norm);
            }
        }
    }
    let sim: Vec<Vec<f64>> =
        emb.iter().map(|x| emb.iter().map(|y| metrics("", x, y).cosine).collect()).collect();
    if a.json {
        let items: Vec<serde_json::Value> = sents
            .iter()
            .zip(&ids)
            .zip(&emb)
            .map(|((s, t), e)| serde_json::json!({"text": s, "ids": t, "embedding": e}))
            .collect();
        let j = serde_json::json!({
            "model": a.model.display().to_string(),
            "output": out.name,
            "dims": d,
            "sequence_length": seq,
            "tokenizer": from,
            "seconds": secs,
            "embeddings": items,
            "similarity": sim,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    eprintln!(
        "ember: {n} sentence(s) in {:.1} ms; output '{}' ({d} values), tokenizer {from}",
        secs * 1e3,
        out.name
    );
    for (i, ((s, t), e)) in sents.iter().zip(&ids).zip(&emb).enumerate() {
        let head: Vec<String> = e.iter().take(4).map(|x| format!("{x:+.4}")).collect();
        println!("[{i}] {} tokens, [{}, ...]  {s}", t.len(), head.join(", "));
    }
    if n > 1 {
        println!("cosine similarity:");
        for (i, row) in sim.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|c| format!("{c:6.3}")).collect();
            println!("[{i}] {}", cells.join(" "));
        }
    }
    Ok(())
}

/// Mean of the first `len` token rows of `x` (`[S, D]`).
fn mean_pool(x: &[f32], d: usize, len: usize) -> Vec<f32> {
    let mut o = vec![0f32; d];
    for row in x.chunks_exact(d).take(len.max(1)) {
        o.iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
    o.iter_mut().for_each(|v| *v /= len.max(1) as f32);
    o
}

/// Reads and checks a tokenizer.json for `quantize --tokenizer`.
pub fn read_tokenizer(p: &Path) -> Result<Vec<u8>> {
    let bytes = super::read(p)?;
    parse_tokenizer(&bytes, &p.display().to_string())?;
    Ok(bytes)
}
