//! Training the shipped tabular model, reproducibly.
//!
//! Everything random comes from one seeded [`SplitMix64`]: the train/test split and the
//! initial weights. The forward pass is [`surge_model::mlp::MlpNet`], the same code the
//! worker scores with. Training runs full-batch AdamW on one thread, so `make train`
//! rewrites the shipped files bit for bit on the same kind of machine.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use surge_model::mlp::{HiddenActivation, MlpNet, OutputActivation};

/// A labelled tabular dataset: the last CSV column is the 0/1 label.
pub struct Dataset {
    /// Feature names (every column but the last).
    pub features: Vec<String>,
    /// Name of the label column.
    pub label: String,
    /// Feature values, one row per example.
    pub x: Vec<Vec<f32>>,
    /// Labels, 0.0 or 1.0.
    pub y: Vec<f32>,
    /// The feature cells exactly as written in the file, for writing samples.
    pub raw: Vec<Vec<String>>,
}

/// Reads a CSV with a header whose last column is a 0/1 label.
pub fn load_csv(path: &Path) -> Result<Dataset> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let header: Vec<String> = rdr.headers()?.iter().map(str::to_string).collect();
    let Some((label, features)) = header.split_last() else {
        bail!("{}: empty header", path.display());
    };
    let (mut x, mut y, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: record {}", path.display(), i + 1))?;
        let cells: Vec<&str> = rec.iter().collect();
        if cells.len() != header.len() {
            bail!(
                "{}: record {} has {} cells, header has {}",
                path.display(),
                i + 1,
                cells.len(),
                header.len()
            );
        }
        let mut row = Vec::with_capacity(features.len());
        for (j, c) in cells[..features.len()].iter().enumerate() {
            row.push(
                c.parse::<f32>()
                    .with_context(|| format!("record {}, column {}", i + 1, header[j]))?,
            );
        }
        let label_value: f32 = cells[features.len()]
            .parse()
            .with_context(|| format!("record {} label", i + 1))?;
        x.push(row);
        y.push(label_value);
        raw.push(
            cells[..features.len()]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        );
    }
    Ok(Dataset {
        features: features.to_vec(),
        label: label.clone(),
        x,
        y,
        raw,
    })
}

/// A tiny, well-known PRNG (Steele et al., 2014): enough for shuffling and initial
/// weights, and identical on every platform.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, with 24 bits of precision (exact in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A stratified split: each class is shuffled and `test_fraction` of it held out, so
/// both halves keep the class balance. Returns `(train, test)` indices, each sorted.
pub fn stratified_split(
    y: &[f32],
    test_fraction: f64,
    rng: &mut SplitMix64,
) -> (Vec<usize>, Vec<usize>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for class in [0.0f32, 1.0] {
        let mut idx: Vec<usize> = (0..y.len()).filter(|&i| y[i] == class).collect();
        for i in (1..idx.len()).rev() {
            let j = rng.below(i + 1);
            idx.swap(i, j);
        }
        let n_test = (idx.len() as f64 * test_fraction).round() as usize;
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Area under the ROC curve: the probability that a random positive scores above a
/// random negative (ties count half), by the rank-sum formula.
pub fn auc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties.
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[order[k]] = avg;
        }
        i = j + 1;
    }
    let n_pos = labels.iter().filter(|&&l| l == 1.0).count() as f64;
    let n_neg = labels.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    let rank_sum: f64 = (0..labels.len())
        .filter(|&i| labels[i] == 1.0)
        .map(|i| ranks[i])
        .sum();
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Share of examples whose score is on the right side of 0.5.
pub fn accuracy(scores: &[f32], labels: &[f32]) -> f64 {
    let right = scores
        .iter()
        .zip(labels)
        .filter(|(s, l)| (**s >= 0.5) == (**l == 1.0))
        .count();
    right as f64 / labels.len() as f64
}

/// Training settings; the defaults produce the shipped model.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Full-batch optimisation steps.
    pub epochs: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Seed of the split and the initial weights.
    pub seed: u64,
    /// Share of each class held out for evaluation.
    pub test_fraction: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            hidden: vec![64, 32],
            epochs: 300,
            learning_rate: 3e-3,
            weight_decay: 1e-4,
            seed: 20_261_127,
            test_fraction: 0.2,
        }
    }
}

/// What training produced.
pub struct Trained {
    /// `(name, shape, values)` of each tensor, in layer order.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Standardisation means (train split).
    pub mean: Vec<f32>,
    /// Standardisation standard deviations (train split).
    pub std: Vec<f32>,
    /// Indices of the held-out examples.
    pub test: Vec<usize>,
    /// Held-out probabilities, in `test` order.
    pub test_scores: Vec<f32>,
    /// Loss on the training split after the last step.
    pub final_loss: f32,
}

fn matrix(rows: &[&Vec<f32>], dim: usize) -> Result<Tensor> {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (rows.len(), dim), &Device::Cpu)?)
}

/// Binary cross-entropy on logits, in the numerically stable form
/// `max(x, 0) - x*y + log(1 + exp(-|x|))`. (candle-nn's version takes `log(sigmoid(x))`,
/// which is `log(0) = -inf` once a logit saturates, and the loss turns NaN.)
pub fn bce_with_logits(x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((x.relu()? - (x * y)?)? + softplus)?.mean_all()
}

/// Trains an MLP on `ds` and scores the held-out split.
pub fn train(ds: &Dataset, cfg: &TrainConfig) -> Result<Trained> {
    let mut rng = SplitMix64(cfg.seed);
    let (train_idx, test_idx) = stratified_split(&ds.y, cfg.test_fraction, &mut rng);
    let dim = ds.features.len();

    // Standardisation constants from the training split only, computed in f64.
    let mut mean = vec![0f32; dim];
    let mut std = vec![0f32; dim];
    for j in 0..dim {
        let m = train_idx
            .iter()
            .map(|&i| f64::from(ds.x[i][j]))
            .sum::<f64>()
            / train_idx.len() as f64;
        let v = train_idx
            .iter()
            .map(|&i| (f64::from(ds.x[i][j]) - m).powi(2))
            .sum::<f64>()
            / train_idx.len() as f64;
        mean[j] = m as f32;
        std[j] = (v.sqrt() as f32).max(1e-6);
    }

    // Layers initialised like PyTorch's nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    let mut widths = vec![dim];
    widths.extend(&cfg.hidden);
    widths.push(1);
    let mut vars = Vec::new();
    let mut layer_tensors = Vec::new();
    for i in 0..widths.len() - 1 {
        let (fan_in, fan_out) = (widths[i], widths[i + 1]);
        let bound = 1.0 / (fan_in as f32).sqrt();
        let mut init = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                .collect()
        };
        let w = Var::from_tensor(&Tensor::from_vec(
            init(fan_out * fan_in),
            (fan_out, fan_in),
            &Device::Cpu,
        )?)?;
        let b = Var::from_tensor(&Tensor::from_vec(init(fan_out), fan_out, &Device::Cpu)?)?;
        layer_tensors.push((w.as_tensor().clone(), b.as_tensor().clone()));
        vars.push(w);
        vars.push(b);
    }
    let standardise = (
        Tensor::from_slice(&mean, dim, &Device::Cpu)?,
        Tensor::from_slice(&std, dim, &Device::Cpu)?,
    );
    let net = MlpNet::new(
        layer_tensors,
        Some(standardise),
        HiddenActivation::Relu,
        OutputActivation::Sigmoid,
    );

    let x = matrix(
        &train_idx.iter().map(|&i| &ds.x[i]).collect::<Vec<_>>(),
        dim,
    )?;
    let y = Tensor::from_vec(
        train_idx.iter().map(|&i| ds.y[i]).collect::<Vec<_>>(),
        (train_idx.len(), 1),
        &Device::Cpu,
    )?;
    let params = ParamsAdamW {
        lr: cfg.learning_rate,
        weight_decay: cfg.weight_decay,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars.clone(), params)?;
    let mut final_loss = f32::NAN;
    for _ in 0..cfg.epochs {
        let logits = net.logits(&x)?;
        let loss = bce_with_logits(&logits, &y)?;
        opt.backward_step(&loss)?;
        final_loss = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    }

    let x_test = matrix(&test_idx.iter().map(|&i| &ds.x[i]).collect::<Vec<_>>(), dim)?;
    let test_scores = net.forward(&x_test)?.flatten_all()?.to_vec1::<f32>()?;

    let mut tensors = Vec::new();
    for (i, pair) in vars.chunks(2).enumerate() {
        for (var, kind) in pair.iter().zip(["weight", "bias"]) {
            let t = var.as_tensor();
            tensors.push((
                format!("layers.{i}.{kind}"),
                t.dims().to_vec(),
                t.flatten_all()?.to_vec1::<f32>()?,
            ));
        }
    }
    Ok(Trained {
        tensors,
        mean,
        std,
        test: test_idx,
        test_scores,
        final_loss,
    })
}
