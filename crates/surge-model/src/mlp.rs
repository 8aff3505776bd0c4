//! `architecture = "mlp"`: a multilayer perceptron for tabular scoring.
//!
//! `model.toml` section:
//!
//! ```toml
//! [mlp]
//! hidden = [64, 32]             # widths of the hidden layers
//! activation = "relu"           # relu | tanh | gelu
//! output_activation = "sigmoid" # sigmoid | softmax | none
//! ```
//!
//! Tensors: `layers.{i}.weight` of shape `[out, in]` and `layers.{i}.bias` of shape
//! `[out]`, for `i` in `0..=hidden.len()`; the last layer has one unit per output name.
//! Inputs are standardised with `[preprocessing]` (`mean`, `std`) when present.

use candle_core::{Device, Tensor};
use candle_nn::{Linear, Module};
use serde::Deserialize;

use crate::spec::InputSpec;
use crate::weights::Weights;
use crate::{Batch, LoadContext, Model, ModelError, ModelInfo, Scores};

/// `[mlp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSection {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Activation after each hidden layer.
    #[serde(default)]
    pub activation: HiddenActivation,
    /// Activation applied to the last layer's output.
    #[serde(default)]
    pub output_activation: OutputActivation,
}

/// Activation after each hidden layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenActivation {
    /// max(0, x).
    #[default]
    Relu,
    /// tanh(x).
    Tanh,
    /// GELU.
    Gelu,
}

/// Activation on the output layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputActivation {
    /// Independent probabilities.
    #[default]
    Sigmoid,
    /// A distribution over the outputs.
    Softmax,
    /// Raw scores.
    None,
}

/// The network itself: shared by the runtime and by `surge-train`, so that the shipped
/// model is scored by exactly the code that trained it.
pub struct MlpNet {
    mean: Option<Tensor>,
    std: Option<Tensor>,
    layers: Vec<Linear>,
    activation: HiddenActivation,
    output_activation: OutputActivation,
}

impl MlpNet {
    /// Builds the network from its tensors: `(weight [out, in], bias [out])` per layer,
    /// and optional standardisation constants of shape `[in]`.
    pub fn new(
        layers: Vec<(Tensor, Tensor)>,
        standardise: Option<(Tensor, Tensor)>,
        activation: HiddenActivation,
        output_activation: OutputActivation,
    ) -> Self {
        let (mean, std) = match standardise {
            Some((m, s)) => (Some(m), Some(s)),
            None => (None, None),
        };
        Self {
            mean,
            std,
            layers: layers
                .into_iter()
                .map(|(w, b)| Linear::new(w, Some(b)))
                .collect(),
            activation,
            output_activation,
        }
    }

    /// Output-layer values before the output activation, `[n, outputs]`.
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = match (&self.mean, &self.std) {
            (Some(m), Some(s)) => x.broadcast_sub(m)?.broadcast_div(s)?,
            _ => x.clone(),
        };
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = match self.activation {
                    HiddenActivation::Relu => h.relu()?,
                    HiddenActivation::Tanh => h.tanh()?,
                    HiddenActivation::Gelu => h.gelu()?,
                };
            }
        }
        Ok(h)
    }

    /// Scores `[n, outputs]`, after the output activation.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.logits(x)?;
        match self.output_activation {
            OutputActivation::Sigmoid => candle_nn::ops::sigmoid(&h),
            OutputActivation::Softmax => candle_nn::ops::softmax_last_dim(&h),
            OutputActivation::None => Ok(h),
        }
    }
}

/// A loaded MLP model.
pub struct Mlp {
    info: ModelInfo,
    net: MlpNet,
    dim: usize,
    device: Device,
}

/// The layer widths an MLP weights file implies: `(inputs, hidden, outputs)`, read from
/// `layers.{i}.weight` (`[out, in]`) and `layers.{i}.bias` (`[out]`). Used to scaffold
/// a `model.toml` from weights alone; says what is wrong when the file is no MLP.
pub fn layout(shapes: &[(String, Vec<usize>)]) -> Result<(usize, Vec<usize>, usize), String> {
    let get = |n: &str| shapes.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone());
    let mut widths = Vec::new();
    let mut i = 0;
    while let Some(w) = get(&format!("layers.{i}.weight")) {
        let [out, inp] = w[..] else {
            return Err(format!("layers.{i}.weight has shape {w:?}; want [out, in]"));
        };
        if let Some(prev) = widths.last() {
            if *prev != inp {
                return Err(format!(
                    "layers.{i}.weight takes {inp} inputs but the layer before gives {prev}"
                ));
            }
        } else {
            widths.push(inp);
        }
        match get(&format!("layers.{i}.bias")) {
            Some(b) if b == [out] => {}
            other => return Err(format!("layers.{i}.bias is {other:?}; want [{out}]")),
        }
        widths.push(out);
        i += 1;
    }
    if widths.len() < 2 {
        return Err("no layers.0.weight: not an mlp weights file (tensors layers.{i}.weight and layers.{i}.bias)".into());
    }
    if shapes.len() != 2 * i {
        let extra: Vec<&str> = shapes
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !n.starts_with("layers."))
            .collect();
        return Err(format!("tensors an mlp does not use: {extra:?}"));
    }
    let outputs = widths.pop().unwrap_or(0);
    let inputs = widths.remove(0);
    Ok((inputs, widths, outputs))
}

/// Loads an MLP from its folder (registered in [`crate::ARCHITECTURES`]).
pub fn load(ctx: &LoadContext) -> Result<Box<dyn Model>, ModelError> {
    let section: MlpSection = ctx.section("mlp")?;
    let InputSpec::Tabular { features } = &ctx.info.input else {
        return Err(ModelError::spec(
            ctx.toml_path(),
            "input.kind",
            "the mlp architecture takes kind = \"tabular\"",
        ));
    };
    let dim = features.len();
    if dim == 0 {
        return Err(ModelError::spec(
            ctx.toml_path(),
            "input.features",
            "list at least one feature",
        ));
    }
    let outputs = ctx.info.output_names.len();
    if outputs == 0 {
        return Err(ModelError::spec(
            ctx.toml_path(),
            "output.names",
            "name at least one output",
        ));
    }
    if let Some(w) = section.hidden.iter().position(|w| *w == 0) {
        return Err(ModelError::spec(
            ctx.toml_path(),
            "mlp.hidden",
            format!("layer {w} has width 0"),
        ));
    }
    let standardise = match &ctx.spec.preprocessing {
        None => None,
        Some(p) => {
            for (field, values) in [
                ("preprocessing.mean", &p.mean),
                ("preprocessing.std", &p.std),
            ] {
                if values.len() != dim {
                    return Err(ModelError::spec(
                        ctx.toml_path(),
                        field,
                        format!("has {} values; input.features has {dim}", values.len()),
                    ));
                }
                if values.iter().any(|x| !x.is_finite()) {
                    return Err(ModelError::spec(
                        ctx.toml_path(),
                        field,
                        "values must be finite",
                    ));
                }
            }
            if let Some(i) = p.std.iter().position(|s| *s <= 0.0) {
                return Err(ModelError::spec(
                    ctx.toml_path(),
                    "preprocessing.std",
                    format!("value {i} ({}) must be positive", p.std[i]),
                ));
            }
            Some((
                Tensor::from_slice(&p.mean, dim, &ctx.device)?,
                Tensor::from_slice(&p.std, dim, &ctx.device)?,
            ))
        }
    };
    let mut weights = Weights::open(&ctx.weights_path)?;
    let mut widths = vec![dim];
    widths.extend(&section.hidden);
    widths.push(outputs);
    let mut layers = Vec::with_capacity(widths.len() - 1);
    for i in 0..widths.len() - 1 {
        let (fan_in, fan_out) = (widths[i], widths[i + 1]);
        let w = weights.take(
            &format!("layers.{i}.weight"),
            &[fan_out, fan_in],
            &ctx.device,
        )?;
        let b = weights.take(&format!("layers.{i}.bias"), &[fan_out], &ctx.device)?;
        layers.push((w, b));
    }
    weights.finish()?;
    Ok(Box::new(Mlp {
        info: ctx.info.clone(),
        net: MlpNet::new(
            layers,
            standardise,
            section.activation,
            section.output_activation,
        ),
        dim,
        device: ctx.device.clone(),
    }))
}

impl Model for Mlp {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn score(&self, batch: &Batch<'_>) -> Result<Scores, ModelError> {
        let Batch::Rows { values, dim } = batch else {
            return Err(ModelError::BadBatch(format!(
                "model {} takes rows, not texts",
                self.info.name
            )));
        };
        if *dim != self.dim || values.len() % self.dim != 0 {
            return Err(ModelError::BadBatch(format!(
                "batch has dimension {dim} and {} values; model {} expects dimension {}",
                values.len(),
                self.info.name,
                self.dim
            )));
        }
        let n = values.len() / self.dim;
        if n == 0 {
            return Ok(Scores {
                width: self.info.output_names.len(),
                values: Vec::new(),
            });
        }
        let x = Tensor::from_slice(values, (n, self.dim), &self.device)?;
        let y = self.net.forward(&x)?;
        let width = y.dim(1)?;
        Ok(Scores {
            width,
            values: y.flatten_all()?.to_vec1::<f32>()?,
        })
    }
}
