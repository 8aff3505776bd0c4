//! `architecture = "mlp"`: a multilayer perceptron for tabular scoring.
//!
//! `model.toml` section:
//!
//! ```toml
//! [mlp]
//! hidden = [64, 32]             # widths of the hidden layers
//! activation = "relu"           # relu | tanh | gelu
//! output_activation = "sigmoid" # sigmoid | softmax | none
//! # tensor_prefix = "net"        # only for files with several numbered groups
//! ```
//!
//! Tensors: per linear layer, `<prefix><n>.weight` of shape `[out, in]` and
//! `<prefix><n>.bias` of shape `[out]`, `hidden.len() + 1` layers taken in the order of
//! `n`; the last layer has one unit per output name. `layers.0`, `layers.1`, ... is what
//! Surge writes; a PyTorch `nn.Sequential` state dict (`0.weight`, `2.weight`, ...,
//! or `net.0.weight` under an attribute) loads as it is ([`linear_layers`]), and
//! `tensor_prefix = "net"` picks one group in a file that holds several.
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
    /// The part of the tensor names before the layer number (`net` for `net.0.weight`),
    /// for files that hold several numbered groups. Default: the one such prefix the
    /// file's names share (see [`linear_layers`]).
    #[serde(default)]
    pub tensor_prefix: Option<String>,
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

/// One linear layer's tensor names in a weights file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearLayer {
    /// `[out, in]`.
    pub weight: String,
    /// `[out]`.
    pub bias: String,
}

/// Splits `<prefix><n>.weight` / `<prefix><n>.bias` into `(prefix, n)`; the prefix is
/// empty or ends with a dot.
fn split_layer_name(name: &str) -> Option<(&str, u64)> {
    let (stem, kind) = name.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (prefix, number) = match stem.rfind('.') {
        Some(dot) => (&name[..=dot], &stem[dot + 1..]),
        None => ("", stem),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((prefix, number.parse().ok()?))
}

/// `[mlp] tensor_prefix` as written (`net`, `net.` or empty) to the form names start with.
fn normalise_prefix(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        prefix.to_string()
    } else {
        format!("{prefix}.")
    }
}

/// The linear layers of an MLP weights file, in order: tensors named
/// `<prefix><n>.weight` and `<prefix><n>.bias`, ordered by `n`, whatever the numbers
/// are. So Surge's own `layers.0`, `layers.1`, ..., PyTorch's `nn.Sequential`
/// (`0.weight`, `2.weight`, `4.weight`: the activations between the `Linear` layers
/// hold no tensors and take the odd numbers) and a Sequential held by an attribute
/// (`net.0.weight`, `model.layers.3.weight`) all work. With `prefix` `None`, the one
/// prefix such names share is used; with `Some`, only that one (for files that hold
/// several numbered groups). A layer lacking its weight or its bias is still listed:
/// taking the missing tensor says which is missing. The error says what was expected;
/// callers add the names found.
pub fn linear_layers(
    shapes: &[(String, Vec<usize>)],
    prefix: Option<&str>,
) -> Result<Vec<LinearLayer>, String> {
    let numbered: Vec<(&str, u64)> = shapes
        .iter()
        .filter_map(|(n, _)| split_layer_name(n))
        .collect();
    let prefix = match prefix {
        Some(p) => {
            let p = normalise_prefix(p);
            if !numbered.iter().any(|(q, _)| *q == p) {
                return Err(format!(
                    "no tensor is named `{p}<n>.weight` or `{p}<n>.bias`, as [mlp] tensor_prefix = {:?} says",
                    p.trim_end_matches('.')
                ));
            }
            p
        }
        None => {
            let mut prefixes: Vec<&str> = numbered.iter().map(|(p, _)| *p).collect();
            prefixes.sort_unstable();
            prefixes.dedup();
            match prefixes[..] {
                [one] => one.to_string(),
                [] => {
                    return Err("no tensor is named like a linear layer: an mlp wants \
                        `<prefix><n>.weight` ([out, in]) and `<prefix><n>.bias` ([out]) per \
                        layer, as in `layers.0.weight` (what Surge writes), `0.weight` (a PyTorch \
                        nn.Sequential's state dict) or `net.0.weight` (a Sequential held by an \
                        attribute); rename the tensors when you export them"
                        .to_string())
                }
                _ => {
                    return Err(format!(
                        "tensors are numbered like linear layers under several prefixes ({}); \
                         say which holds the network with [mlp] tensor_prefix \
                         (`surge models new --tensor-prefix`)",
                        prefixes
                            .iter()
                            .map(|p| format!("{:?}", p.trim_end_matches('.')))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
        }
    };
    let mut numbers: Vec<u64> = numbered
        .iter()
        .filter(|(p, _)| *p == prefix)
        .map(|(_, n)| *n)
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    Ok(numbers
        .into_iter()
        .map(|n| LinearLayer {
            weight: format!("{prefix}{n}.weight"),
            bias: format!("{prefix}{n}.bias"),
        })
        .collect())
}

/// What an MLP weights file implies, for scaffolding a `model.toml` from weights alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpShape {
    /// Input dimension (the first layer's `in`).
    pub inputs: usize,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Output dimension (the last layer's `out`).
    pub outputs: usize,
    /// The layers' tensor names, in order.
    pub layers: Vec<LinearLayer>,
}

/// The layer widths an MLP weights file implies, read from its linear layers (see
/// [`linear_layers`]). Says what is wrong, and lists the tensors found, when the file
/// is no MLP.
pub fn layout(shapes: &[(String, Vec<usize>)], prefix: Option<&str>) -> Result<MlpShape, String> {
    let fail = |m: String| format!("{m}; found: {}", crate::weights::found(shapes));
    let get = |n: &str| shapes.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone());
    let layers = linear_layers(shapes, prefix).map_err(fail)?;
    let mut widths: Vec<usize> = Vec::new();
    for l in &layers {
        let Some(w) = get(&l.weight) else {
            return Err(fail(format!("{} is missing (beside {})", l.weight, l.bias)));
        };
        let [out, inp] = w[..] else {
            return Err(fail(format!(
                "{} has shape {w:?}; a linear layer's weight is [out, in]",
                l.weight
            )));
        };
        match widths.last() {
            Some(prev) if *prev != inp => {
                return Err(fail(format!(
                    "{} takes {inp} inputs but the layer before gives {prev}",
                    l.weight
                )))
            }
            Some(_) => {}
            None => widths.push(inp),
        }
        match get(&l.bias) {
            Some(b) if b == [out] => {}
            Some(b) => {
                return Err(fail(format!(
                    "{} has shape {b:?}; want [{out}] to match {}",
                    l.bias, l.weight
                )))
            }
            None => return Err(fail(format!("{} is missing (beside {})", l.bias, l.weight))),
        }
        widths.push(out);
    }
    let mut unused: Vec<&str> = shapes
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !layers.iter().any(|l| l.weight == *n || l.bias == *n))
        .collect();
    unused.sort_by(|a, b| crate::compare_versions(a, b));
    if !unused.is_empty() {
        return Err(fail(format!(
            "tensors an mlp does not use: {} (an mlp is linear layers with activations between them; \
             batch norm, embeddings and other layers are not supported)",
            unused.join(", ")
        )));
    }
    let (Some(&inputs), Some(&outputs)) = (widths.first(), widths.last()) else {
        return Err(fail("no linear layer".to_string()));
    };
    Ok(MlpShape {
        inputs,
        hidden: widths[1..widths.len() - 1].to_vec(),
        outputs,
        layers,
    })
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
    let names =
        linear_layers(&weights.shapes(), section.tensor_prefix.as_deref()).map_err(|message| {
            ModelError::TensorNames {
                path: weights.path().to_path_buf(),
                message,
                found: weights.found(),
            }
        })?;
    let mut widths = vec![dim];
    widths.extend(&section.hidden);
    widths.push(outputs);
    let needed = widths.len() - 1;
    if names.len() < needed {
        return Err(ModelError::TensorNames {
            path: weights.path().to_path_buf(),
            message: format!(
                "model.toml describes {needed} linear layers ({dim} features, [mlp] hidden {:?}, \
                 {outputs} outputs) but the weights hold {} ({})",
                section.hidden,
                names.len(),
                names
                    .iter()
                    .map(|l| l.weight.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            found: weights.found(),
        });
    }
    let mut layers = Vec::with_capacity(needed);
    // Extra layers are left in the file, so `finish` names them.
    for (i, names) in names.iter().take(needed).enumerate() {
        let (fan_in, fan_out) = (widths[i], widths[i + 1]);
        let w = weights.take(&names.weight, &[fan_out, fan_in], &ctx.device)?;
        let b = weights.take(&names.bias, &[fan_out], &ctx.device)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    type Shapes = Vec<(String, Vec<usize>)>;

    fn shapes(list: &[(&str, &[usize])]) -> Shapes {
        list.iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect()
    }

    /// A 30 → 64 → 32 → 1 network under the given names of its three layers.
    fn mlp(names: [&str; 3]) -> Vec<(String, Vec<usize>)> {
        let dims = [[64, 30], [32, 64], [1, 32]];
        names
            .iter()
            .zip(dims)
            .flat_map(|(n, [o, i])| {
                [
                    (format!("{n}.weight"), vec![o, i]),
                    (format!("{n}.bias"), vec![o]),
                ]
            })
            .collect()
    }

    #[test]
    fn sequential_and_prefixed_numberings_give_the_same_network() {
        for names in [
            ["layers.0", "layers.1", "layers.2"],
            ["layers.0", "layers.2", "layers.4"],
            ["0", "2", "4"],
            ["net.0", "net.2", "net.4"],
            ["model.layers.3", "model.layers.5", "model.layers.10"],
        ] {
            let got = layout(&mlp(names), None).unwrap_or_else(|e| panic!("{names:?}: {e}"));
            assert_eq!(
                (got.inputs, got.hidden.clone(), got.outputs),
                (30, vec![64, 32], 1),
                "{names:?}"
            );
            let weights: Vec<&str> = got.layers.iter().map(|l| l.weight.as_str()).collect();
            assert_eq!(
                weights,
                names
                    .map(|n| format!("{n}.weight"))
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                "layers are taken in numeric order, not text order"
            );
        }
    }

    #[test]
    fn layers_0_2_4_are_not_reported_as_unused_nothing() {
        // The bug: `layers.1` was looked for, then the unused tensors were listed
        // without those named `layers.*`, which printed "does not use: []".
        let got = layout(&mlp(["layers.0", "layers.2", "layers.4"]), None).unwrap();
        assert_eq!(got.hidden, [64, 32]);
        let mut extra = mlp(["layers.0", "layers.2", "layers.4"]);
        extra.push(("layers.4.running_mean".into(), vec![1]));
        let err = layout(&extra, None).unwrap_err();
        assert!(
            err.contains("does not use: layers.4.running_mean") && !err.contains("[]"),
            "{err}"
        );
    }

    #[test]
    fn every_naming_error_lists_the_tensors_found() {
        let cases: Vec<(Shapes, Option<&str>, &str)> = vec![
            (
                shapes(&[("fc1.w", &[64, 30]), ("fc1.b", &[64])]),
                None,
                "no tensor is named like a linear layer",
            ),
            (
                {
                    let mut s = mlp(["enc.0", "enc.2", "enc.4"]);
                    s.extend(mlp(["dec.0", "dec.2", "dec.4"]));
                    s
                },
                None,
                "several prefixes (\"dec\", \"enc\")",
            ),
            (
                mlp(["0", "2", "4"]),
                Some("net"),
                "no tensor is named `net.<n>.weight`",
            ),
            (
                shapes(&[("0.weight", &[64, 30])]),
                None,
                "0.bias is missing",
            ),
            (
                shapes(&[("0.weight", &[64, 30, 1]), ("0.bias", &[64])]),
                None,
                "[out, in]",
            ),
        ];
        for (s, prefix, want) in cases {
            let err = layout(&s, prefix).unwrap_err();
            assert!(err.contains(want), "{want:?} missing from: {err}");
            let (first, shape) = &s[0];
            assert!(
                err.contains("found: ") && err.contains(&format!("{first} {shape:?}")),
                "the names found are missing from: {err}"
            );
        }
    }

    #[test]
    fn a_tensor_prefix_picks_one_group() {
        let mut s = mlp(["enc.0", "enc.2", "enc.4"]);
        s.extend(mlp(["dec.0", "dec.2", "dec.4"]));
        let layers = linear_layers(&s, Some("dec")).unwrap();
        assert_eq!(layers[2].bias, "dec.4.bias");
        assert_eq!(
            linear_layers(&s, Some("enc.")).unwrap()[0].weight,
            "enc.0.weight"
        );
        // The other group is then unused: a scaffold refuses it rather than dropping it.
        let err = layout(&s, Some("dec")).unwrap_err();
        assert!(err.contains("does not use: enc.0.bias"), "{err}");
        // Names without a number are no layers.
        assert_eq!(split_layer_name("head.weight"), None);
        assert_eq!(split_layer_name("0.weight"), Some(("", 0)));
        assert_eq!(split_layer_name("a.b.12.bias"), Some(("a.b.", 12)));
        assert_eq!(split_layer_name("a.1.running_mean"), None);
    }
}
