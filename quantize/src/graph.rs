//! The quantizer's IR: an ONNX-like graph of named values, with constants held aside.

use crate::tensor::HostTensor;
use std::collections::{HashMap, HashSet};

#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
    Tensor(HostTensor),
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: HashMap<String, Attr>,
}

impl Node {
    pub fn int(&self, k: &str) -> Option<i64> {
        match self.attrs.get(k) {
            Some(Attr::Int(v)) => Some(*v),
            _ => None,
        }
    }
    pub fn float(&self, k: &str) -> Option<f32> {
        match self.attrs.get(k) {
            Some(Attr::Float(v)) => Some(*v),
            _ => None,
        }
    }
    pub fn ints(&self, k: &str) -> Option<&[i64]> {
        match self.attrs.get(k) {
            Some(Attr::Ints(v)) => Some(v),
            _ => None,
        }
    }
    /// Input `i`, or None when absent or given as "" (ONNX's empty optional input).
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs.get(i).map(|s| s.as_str()).filter(|s| !s.is_empty())
    }
}

/// Element type of a graph value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemType {
    F32,
    I64,
}

/// A dimension as declared by the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    Fixed(usize),
    Sym(String),
}

#[derive(Clone, Debug)]
pub struct ValueDecl {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<Dim>,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueDecl>,
    pub outputs: Vec<ValueDecl>,
    pub consts: HashMap<String, HostTensor>,
    pub opset: i64,
}

impl Graph {
    /// Number of nodes reading each value, graph outputs counting as readers.
    pub fn consumers(&self) -> HashMap<String, usize> {
        let mut c: HashMap<String, usize> = HashMap::new();
        for n in &self.nodes {
            for i in n.inputs.iter().filter(|s| !s.is_empty()) {
                *c.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &self.outputs {
            *c.entry(o.name.clone()).or_default() += 1;
        }
        c
    }

    /// Sorts nodes topologically; fails naming a node whose inputs are never produced (or a cycle).
    pub fn toposort(&mut self) -> Result<(), String> {
        let mut ready: HashSet<String> = self.inputs.iter().map(|i| i.name.clone()).collect();
        ready.extend(self.consts.keys().cloned());
        let mut pending: Vec<Node> = std::mem::take(&mut self.nodes);
        let mut out = Vec::with_capacity(pending.len());
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for n in pending {
                if n.inputs.iter().all(|i| i.is_empty() || ready.contains(i)) {
                    ready.extend(n.outputs.iter().cloned());
                    out.push(n);
                } else {
                    rest.push(n);
                }
            }
            if rest.len() == before {
                let n = &rest[0];
                let missing: Vec<&String> =
                    n.inputs.iter().filter(|i| !i.is_empty() && !ready.contains(*i)).collect();
                return Err(format!(
                    "node '{}' ({}) reads {:?}, which no node, input or initializer produces (or the graph has a cycle)",
                    n.name, n.op, missing
                ));
            }
            pending = rest;
        }
        self.nodes = out;
        for o in &self.outputs {
            if !ready.contains(&o.name) {
                return Err(format!("graph output '{}' is never produced", o.name));
            }
        }
        Ok(())
    }
}
