//! The model thread. Forward passes are CPU-bound and may take long; they run on one
//! dedicated OS thread that owns the models, never on tokio's workers, so heartbeats
//! and acks keep flowing while a batch is scored. Async callers send a request and
//! await a oneshot reply.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, RwLock};

use surge_model::{Batch, Model, ModelError, Registry, Scores};
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

/// A forward pass's outputs, already split per job.
#[derive(Debug)]
pub struct Scored {
    /// For each job, in the order given, one output per input.
    pub per_job: Vec<Vec<Vec<f32>>>,
    /// Forward pass time, ms.
    pub ms: f64,
}

/// Splits `scores` into consecutive jobs of `sizes` inputs each; `None` when the
/// scores do not cover them exactly.
pub fn split(scores: &Scores, sizes: &[usize]) -> Option<Vec<Vec<Vec<f32>>>> {
    if sizes.iter().sum::<usize>() != scores.len() {
        return None;
    }
    let mut at = 0;
    Some(
        sizes
            .iter()
            .map(|&n| {
                let job = (at..at + n).map(|r| scores.row(r).to_vec()).collect();
                at += n;
                job
            })
            .collect(),
    )
}

enum Request {
    Score {
        model: ModelKey,
        inputs: BatchInputs,
        sizes: Vec<usize>,
        reply: oneshot::Sender<Result<Scored, ModelError>>,
    },
    /// A model found after start (hot discovery); replaces one of the same name.
    Add(Box<dyn Model>, oneshot::Sender<()>),
}

/// One version of a model: `(name, version)`.
pub type ModelKey = (String, String);

fn key_of(m: &dyn Model) -> ModelKey {
    (m.info().name.clone(), m.info().version.clone())
}

/// What the engine serves; a snapshot, cheap to clone.
pub type ModelInfos = Arc<Registry>;

/// Handle to the model thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Request>,
    // Readers take a snapshot (an Arc clone); a model added later swaps in a new map.
    infos: Arc<RwLock<ModelInfos>>,
}

impl Engine {
    /// Moves `models` onto a new thread and returns a handle to it. The thread ends
    /// when the last handle is dropped.
    pub fn start(models: Vec<Box<dyn Model>>) -> std::io::Result<Self> {
        let infos = Registry::of(models.iter().map(|m| m.info()));
        let mut by_name: HashMap<ModelKey, Box<dyn Model>> = models
            .into_iter()
            .map(|m| (key_of(m.as_ref()), m))
            .collect();
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("surge-model".into())
            .spawn(move || {
                while let Ok(req) = rx.recv() {
                    let (model, inputs, sizes, reply) = match req {
                        Request::Add(m, done) => {
                            by_name.insert(key_of(m.as_ref()), m);
                            let _ = done.send(());
                            continue;
                        }
                        Request::Score {
                            model,
                            inputs,
                            sizes,
                            reply,
                        } => (model, inputs, sizes, reply),
                    };
                    let started = std::time::Instant::now();
                    let out = match by_name.get(&model) {
                        None => Err(ModelError::BadBatch(format!(
                            "no model {} version {}",
                            model.0, model.1
                        ))),
                        Some(m) => {
                            let batch = match &inputs {
                                BatchInputs::Rows { values, dim } => {
                                    Batch::Rows { values, dim: *dim }
                                }
                                BatchInputs::Texts(t) => Batch::Texts(t),
                            };
                            m.score(&batch)
                        }
                    };
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    let out = out.and_then(|s| {
                        split(&s, &sizes)
                            .map(|per_job| Scored { per_job, ms })
                            .ok_or_else(|| {
                                ModelError::Inference(format!(
                                    "the model returned {} outputs for {} inputs",
                                    s.len(),
                                    sizes.iter().sum::<usize>()
                                ))
                            })
                    });
                    // The caller may have given up (shutdown); nothing to do then.
                    let _ = reply.send(out);
                }
            })?;
        Ok(Self {
            tx,
            infos: Arc::new(RwLock::new(Arc::new(infos))),
        })
    }

    /// What the engine serves now, by model name.
    pub fn models(&self) -> ModelInfos {
        match self.infos.read() {
            Ok(g) => g.clone(),
            // A panic while holding the lock cannot leave the map half-written (it is
            // swapped whole), so the value is still good.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Adds a model found after start; returns once the model thread holds it, so a
    /// job routed to it right after finds it.
    pub async fn add(&self, model: Box<dyn Model>) -> Result<(), ModelError> {
        let info = model.info().clone();
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Request::Add(model, done))
            .map_err(|_| ModelError::Inference("the model thread has stopped".into()))?;
        rx.await
            .map_err(|_| ModelError::Inference("the model thread stopped".into()))?;
        let mut guard = match self.infos.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut map = (**guard).clone();
        map.insert(info);
        *guard = Arc::new(map);
        Ok(())
    }

    /// Names of the models served (one per queue), sorted.
    pub fn model_names(&self) -> Vec<String> {
        self.models()
            .names()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Scores one batch with `model` (name and version): the inputs of
    /// consecutive jobs of `sizes` inputs each. Returns each job's outputs and the
    /// forward pass time.
    pub async fn score(
        &self,
        model: &ModelKey,
        inputs: BatchInputs,
        sizes: Vec<usize>,
    ) -> Result<Scored, ModelError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Score {
                model: model.clone(),
                inputs,
                sizes,
                reply,
            })
            .map_err(|_| ModelError::Inference("the model thread has stopped".into()))?;
        rx.await.map_err(|_| {
            ModelError::Inference("the model thread dropped the request (it panicked?)".into())
        })?
    }
}
