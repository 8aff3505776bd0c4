//! The model thread. Forward passes are CPU-bound and may take long; they run on one
//! dedicated OS thread that owns the models, never on tokio's workers, so heartbeats
//! and acks keep flowing while a batch is scored. Async callers send a request and
//! await a oneshot reply.

use std::collections::HashMap;
use std::sync::mpsc;

use surge_model::{Batch, Model, ModelError, ModelInfo, Scores};
use tokio::sync::oneshot;

/// Owned inputs of one forward pass.
#[derive(Debug)]
pub enum BatchInputs {
    /// Row-major values, `dim` per row.
    Rows {
        /// Values.
        values: Vec<f32>,
        /// Values per row.
        dim: usize,
    },
    /// Texts.
    Texts(Vec<String>),
}

struct Request {
    model: String,
    inputs: BatchInputs,
    reply: oneshot::Sender<Result<(Scores, f64), ModelError>>,
}

/// Handle to the model thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Request>,
    infos: std::sync::Arc<HashMap<String, ModelInfo>>,
}

impl Engine {
    /// Moves `models` onto a new thread and returns a handle to it. The thread ends
    /// when the last handle is dropped.
    pub fn start(models: Vec<Box<dyn Model>>) -> std::io::Result<Self> {
        let infos = models
            .iter()
            .map(|m| (m.info().name.clone(), m.info().clone()))
            .collect();
        let by_name: HashMap<String, Box<dyn Model>> = models
            .into_iter()
            .map(|m| (m.info().name.clone(), m))
            .collect();
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("surge-model".into())
            .spawn(move || {
                while let Ok(req) = rx.recv() {
                    let started = std::time::Instant::now();
                    let out = match by_name.get(&req.model) {
                        None => Err(ModelError::BadBatch(format!("no model {}", req.model))),
                        Some(m) => {
                            let batch = match &req.inputs {
                                BatchInputs::Rows { values, dim } => {
                                    Batch::Rows { values, dim: *dim }
                                }
                                BatchInputs::Texts(t) => Batch::Texts(t),
                            };
                            m.score(&batch)
                        }
                    };
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    // The caller may have given up (shutdown); nothing to do then.
                    let _ = req.reply.send(out.map(|s| (s, ms)));
                }
            })?;
        Ok(Self {
            tx,
            infos: std::sync::Arc::new(infos),
        })
    }

    /// What the engine serves, by model name.
    pub fn models(&self) -> &HashMap<String, ModelInfo> {
        &self.infos
    }

    /// Scores one batch; returns the scores and the forward pass time in ms.
    pub async fn score(
        &self,
        model: &str,
        inputs: BatchInputs,
    ) -> Result<(Scores, f64), ModelError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                model: model.to_string(),
                inputs,
                reply,
            })
            .map_err(|_| ModelError::Inference("the model thread has stopped".into()))?;
        rx.await.map_err(|_| {
            ModelError::Inference("the model thread dropped the request (it panicked?)".into())
        })?
    }
}
