//! The tape: records differentiable ops on GPU tensors and runs the reverse pass.
//!
//! Every backward rule is written with the same differentiable ops (see `ops.rs`), so running
//! the reverse pass while recording (`create_graph = true`) yields gradients that can be
//! differentiated again: the second-order pass that training an LPN needs.

pub mod ops;
pub mod params;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub use params::ParamStore;

/// A tensor seen by the tape: `id` is set when gradients can flow to it.
#[derive(Clone)]
pub struct Var {
    pub(crate) id: Option<usize>,
    t: Tensor,
}

impl Var {
    pub fn tensor(&self) -> &Tensor {
        &self.t
    }

    pub fn shape(&self) -> &[usize] {
        self.t.shape()
    }

    /// Whether gradients flow back to this value.
    pub fn tracked(&self) -> bool {
        self.id.is_some()
    }
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var({:?}, {:?})", self.id, self.t.shape())
    }
}

/// Gradients of an op's inputs given the gradient of its output, built from graph ops.
pub(crate) type BackwardFn = Rc<dyn Fn(&Graph, &[Var], &Var) -> Result<Vec<Option<Var>>>>;

struct Node {
    name: &'static str,
    inputs: Vec<Var>,
    backward: BackwardFn,
}

struct Tape {
    /// `None` for leaves and for nodes already consumed by a reverse pass.
    nodes: Vec<Option<Node>>,
    recording: bool,
}

/// A recording context on one engine. Not shared between threads.
pub struct Graph {
    engine: Engine,
    tape: RefCell<Tape>,
    /// During a reverse pass: which inputs of the node being differentiated lead to a value
    /// the pass was asked for (the others' gradients are not computed).
    needs: RefCell<Vec<bool>>,
}

impl Graph {
    /// A graph that records ops (training mode).
    pub fn new(engine: &Engine) -> Graph {
        Graph {
            engine: engine.clone(),
            tape: RefCell::new(Tape {
                nodes: Vec::new(),
                recording: true,
            }),
            needs: RefCell::new(Vec::new()),
        }
    }

    /// A graph that records nothing: inference mode; intermediate tensors are freed as soon as
    /// the values holding them are dropped.
    pub fn inference(engine: &Engine) -> Graph {
        let g = Graph::new(engine);
        g.tape.borrow_mut().recording = false;
        g
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn is_recording(&self) -> bool {
        self.tape.borrow().recording
    }

    /// Number of nodes recorded (leaves included).
    pub fn len(&self) -> usize {
        self.tape.borrow().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A value gradients do not flow to.
    pub fn constant(&self, t: Tensor) -> Var {
        Var { id: None, t }
    }

    /// A value gradients flow to (a parameter or an input we differentiate by).
    pub fn leaf(&self, t: Tensor) -> Var {
        let mut tape = self.tape.borrow_mut();
        if !tape.recording {
            return Var { id: None, t };
        }
        tape.nodes.push(None);
        Var {
            id: Some(tape.nodes.len() - 1),
            t,
        }
    }

    /// Whether a backward rule must compute the gradient of its input `k`: false when no value
    /// the running reverse pass was asked for depends on that input (true outside a pass).
    pub(crate) fn needs(&self, k: usize) -> bool {
        self.needs.borrow().get(k).copied().unwrap_or(true)
    }

    /// Records the result `t` of op `name` on `inputs`; tracked only if an input is.
    pub(crate) fn record(
        &self,
        name: &'static str,
        t: Tensor,
        inputs: &[&Var],
        backward: BackwardFn,
    ) -> Var {
        let mut tape = self.tape.borrow_mut();
        if !tape.recording || !inputs.iter().any(|v| v.tracked()) {
            return Var { id: None, t };
        }
        tape.nodes.push(Some(Node {
            name,
            inputs: inputs.iter().map(|v| (*v).clone()).collect(),
            backward,
        }));
        Var {
            id: Some(tape.nodes.len() - 1),
            t,
        }
    }

    /// Gradients of the scalar `loss` with respect to `wrt` (`None` where `loss` does not depend
    /// on it). With `create_graph`, the reverse pass is itself recorded so the gradients can be
    /// differentiated again; without, each node's saved tensors are released as soon as the
    /// pass has used them.
    pub fn backward(
        &self,
        loss: &Var,
        wrt: &[&Var],
        create_graph: bool,
    ) -> Result<Vec<Option<Var>>> {
        if loss.t.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!("loss must be a scalar, got {:?}", loss.shape()),
            ));
        }
        let ones = Tensor::full(&self.engine, loss.shape(), 1.0)?;
        self.backward_from(loss, self.constant(ones), wrt, create_graph)
    }

    /// Vector-Jacobian product: gradients of Σ out·seed with respect to `wrt`.
    pub fn backward_from(
        &self,
        out: &Var,
        seed: Var,
        wrt: &[&Var],
        create_graph: bool,
    ) -> Result<Vec<Option<Var>>> {
        let Some(start) = out.id else {
            return Ok(vec![None; wrt.len()]);
        };
        let want: HashMap<usize, usize> = wrt
            .iter()
            .enumerate()
            .filter_map(|(k, v)| v.id.map(|id| (id, k)))
            .collect();
        // reach[i]: node i depends on a value in `wrt`; only those need gradients.
        let mut reach = vec![false; start + 1];
        {
            let tape = self.tape.borrow();
            for i in 0..=start {
                reach[i] = want.contains_key(&i)
                    || tape.nodes[i].as_ref().is_some_and(|n| {
                        n.inputs
                            .iter()
                            .any(|v| v.id.is_some_and(|j| j < i && reach[j]))
                    });
            }
        }
        let mut result: Vec<Option<Var>> = vec![None; wrt.len()];
        let mut grads: HashMap<usize, Var> = HashMap::new();
        grads.insert(start, seed);
        let was_recording = std::mem::replace(&mut self.tape.borrow_mut().recording, create_graph);
        let outcome = (|| -> Result<()> {
            for i in (0..=start).rev() {
                let Some(grad) = grads.remove(&i) else {
                    continue;
                };
                if let Some(&k) = want.get(&i) {
                    result[k] = Some(grad.clone());
                }
                let node = {
                    let mut tape = self.tape.borrow_mut();
                    if create_graph {
                        // Keep the node: the graph may be differentiated again.
                        tape.nodes[i]
                            .as_ref()
                            .map(|n| (n.name, n.inputs.clone(), n.backward.clone()))
                    } else {
                        // Consumed: its saved tensors are released after this step.
                        tape.nodes[i].take().map(|n| (n.name, n.inputs, n.backward))
                    }
                };
                let Some((name, inputs, backward)) = node else {
                    continue;
                };
                if !reach[i] {
                    continue;
                }
                let needs: Vec<bool> = inputs
                    .iter()
                    .map(|v| v.id.is_some_and(|j| reach[j]))
                    .collect();
                *self.needs.borrow_mut() = needs.clone();
                let input_grads = backward(self, &inputs, &grad);
                self.needs.borrow_mut().clear();
                let input_grads = input_grads?;
                drop(backward);
                if input_grads.len() != inputs.len() {
                    return Err(Error::Gpu(format!(
                        "backward of {name} returned {} gradients for {} inputs",
                        input_grads.len(),
                        inputs.len()
                    )));
                }
                for ((inp, g), need) in inputs.iter().zip(input_grads).zip(needs) {
                    let (Some(id), Some(g), true) = (inp.id, g, need) else {
                        continue;
                    };
                    if g.shape() != inp.shape() {
                        return Err(Error::shape(
                            name,
                            format!(
                                "backward produced {:?} for an input of {:?}",
                                g.shape(),
                                inp.shape()
                            ),
                        ));
                    }
                    let acc = match grads.remove(&id) {
                        Some(prev) => self.add(&prev, &g)?,
                        None => g,
                    };
                    grads.insert(id, acc);
                }
            }
            Ok(())
        })();
        self.tape.borrow_mut().recording = was_recording;
        outcome?;
        Ok(result)
    }
}
