//! The parameter store: named GPU tensors in a stable order, as a model's `state_dict`.

use std::collections::HashMap;

use super::{Graph, Var};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Named parameters; names and order are fixed when the model is built.
#[derive(Clone, Default)]
pub struct ParamStore {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name`; returns its index. Names must be unique.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) -> usize {
        let name = name.into();
        assert!(
            !self.index.contains_key(&name),
            "parameter {name} defined twice"
        );
        self.index.insert(name.clone(), self.names.len());
        self.names.push(name);
        self.tensors.push(t);
        self.names.len() - 1
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Replaces parameter `i` (same shape required).
    pub fn set(&mut self, i: usize, t: Tensor) -> Result<()> {
        if t.shape() != self.tensors[i].shape() {
            return Err(Error::shape(
                "ParamStore::set",
                format!(
                    "{} is {:?}, got {:?}",
                    self.names[i],
                    self.tensors[i].shape(),
                    t.shape()
                ),
            ));
        }
        self.tensors[i] = t;
        Ok(())
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(Tensor::numel).sum()
    }

    /// The parameters as graph leaves (tracked when the graph records).
    pub fn vars(&self, g: &Graph) -> Vec<Var> {
        self.tensors.iter().map(|t| g.leaf(t.clone())).collect()
    }
}
