//! `_core.SETTINGS`: the settings table (`settings::SETTINGS`) as read-only Python records.

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::error::Error;
use crate::settings::{Default, Kind, Setting, SETTINGS};

/// One `HEX_PROXY_*` setting of the table.
#[pyclass(frozen, module = "scrapy_hexproxy._core", name = "Setting")]
pub struct PySetting(&'static Setting);

/// The table, in the README's order.
pub fn table(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    let records = SETTINGS
        .iter()
        .map(|setting| Bound::new(py, PySetting(setting)))
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, records)
}

#[pymethods]
impl PySetting {
    #[getter]
    fn name(&self) -> &'static str {
        self.0.name
    }

    #[getter]
    fn key(&self) -> Option<&'static str> {
        self.0.key
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.0.kind.as_str()
    }

    #[getter]
    fn default<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.0.default {
            Default::Unset | Default::Required => py.None().into_bound(py),
            Default::Bool(value) => value.into_pyobject(py)?.to_owned().into_any(),
            Default::Int(value) => value.into_pyobject(py)?.into_any(),
            Default::Seconds(value) => value.into_pyobject(py)?.into_any(),
            Default::Codes(codes) => PyTuple::new(py, codes)?.into_any(),
            Default::Text(text) => text.into_pyobject(py)?.into_any(),
        })
    }

    #[getter]
    fn required(&self) -> bool {
        matches!(self.0.default, Default::Required)
    }

    #[getter]
    fn minimum(&self) -> Option<i64> {
        self.0.bounds().map(|(min, _)| min)
    }

    #[getter]
    fn maximum(&self) -> Option<i64> {
        self.0.bounds().map(|(_, max)| max)
    }

    #[getter]
    fn choices<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match self.0.kind {
            Kind::Choice(choices) => Ok(Some(PyTuple::new(py, choices)?)),
            _ => Ok(None),
        }
    }

    #[getter]
    fn fallback(&self) -> Option<&'static str> {
        self.0.fallback
    }

    #[getter]
    fn doc(&self) -> &'static str {
        self.0.doc
    }

    /// Checks a converted value against the bounds or choices, for the settings the core does
    /// not take (`key` is None): the rule stays the core's. `ValueError` names the setting.
    fn check(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let checked = match self.0.kind {
            Kind::Int { .. } => self.0.check_int(value.extract()?).map(drop),
            Kind::Seconds { .. } => self.0.check_seconds(value.extract()?).map(drop),
            Kind::Choice(_) => self.0.check_choice(&value.extract::<String>()?).map(drop),
            _ => Ok(()),
        };
        Ok(checked.map_err(Error::from)?)
    }

    fn __repr__(&self) -> String {
        format!("<Setting {} ({})>", self.0.name, self.0.kind.as_str())
    }
}
