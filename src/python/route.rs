//! Where an attempt goes and with which credentials: the gateway's URL and a session's
//! `Proxy-Authorization` (made per session, cached for small pools), or one listed proxy's.

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::engine::Engine;
use crate::provider::{Gateway, Provider};

use super::scrapy::Scrapy;

/// Pools of up to this many sessions keep the id string and header bytes made for each session
/// (a cache, direct-mapped by session number), so that attempts on a session share them: each
/// is made once a crawl (once per identity when ids rotate). In a larger pool an attempt would
/// rarely find its session's there, so every attempt makes its own.
const CACHED_UP_TO: u32 = 1024;

/// Where attempts go.
pub enum Route {
    /// One URL; the username, so the header, is made per session.
    Gateway(GatewayRoute),
    /// A proxy per session: each one's URL and header made once, at start (a list is small).
    List(Box<[Listed]>),
}

pub struct GatewayRoute {
    url: Py<PyString>,
    gateway: Gateway,
    /// `None` for a pool larger than `CACHED_UP_TO`.
    cache: Option<Mutex<Box<[Option<Credentials>]>>>,
    /// Attempts may share their session's id object: not with `HEX_PROXY_BIND_COOKIEJAR`,
    /// which tells a jar it set (the very `hex_session` object) from one the user set by
    /// identity, and a user may well set a jar to the id a response came back with.
    share_ids: bool,
}

/// A session number's id (for `meta["hex_session"]`) and `Proxy-Authorization` value. Both are
/// immutable Python objects, so requests may share them.
struct Credentials {
    number: u64,
    id: Py<PyString>,
    header: Py<PyBytes>,
}

pub struct Listed {
    /// For `meta["proxy"]`: without credentials, or with them where HttpProxyMiddleware's own
    /// note of the header's proxy could not be found (it then makes the header itself).
    pub url: Py<PyString>,
    /// `None`: a proxy without credentials, or credentials in the URL.
    pub header: Option<Py<PyBytes>>,
    /// The URL without credentials, as HttpProxyMiddleware leaves `meta["proxy"]`.
    plain_url: Py<PyString>,
}

/// What `assign` sends: the proxy URL, the session id, and the header if any.
pub struct Sent<'py> {
    pub url: Bound<'py, PyString>,
    pub id: Bound<'py, PyString>,
    pub header: Option<Bound<'py, PyBytes>>,
}

impl Route {
    /// `gateway_url`: the gateway's URL for `meta["proxy"]` (the runtime's), unused with a list.
    pub fn new(
        py: Python<'_>,
        engine: &Engine,
        scrapy: &Scrapy,
        gateway_url: &Bound<'_, PyAny>,
        bind_cookiejar: bool,
    ) -> PyResult<Self> {
        Ok(match &engine.config().provider {
            Provider::Gateway(gateway) => Self::Gateway(GatewayRoute {
                url: gateway_url.cast::<PyString>()?.clone().unbind(),
                gateway: gateway.clone(),
                share_ids: !bind_cookiejar,
                cache: match engine.config().pool_size {
                    size @ 1..=CACHED_UP_TO => Some(Mutex::new((0..size).map(|_| None).collect())),
                    _ => None,
                },
            }),
            Provider::List(list) => Self::List(
                list.iter()
                    .map(|proxy| {
                        let plain_url = PyString::new(py, proxy.url()).unbind();
                        match (proxy.url_with_credentials(), scrapy.auth_proxy_key(py)) {
                            (Some(url), None) => Listed {
                                url: PyString::new(py, &url).unbind(),
                                header: None,
                                plain_url,
                            },
                            _ => Listed {
                                url: plain_url.clone_ref(py),
                                header: proxy
                                    .header()
                                    .map(|header| PyBytes::new(py, header.as_bytes()).unbind()),
                                plain_url,
                            },
                        }
                    })
                    .collect(),
            ),
        })
    }

    /// The URL, id and header of session `number` (a number the engine handed out).
    pub fn sent<'py>(&self, py: Python<'py>, engine: &Engine, number: u64) -> PyResult<Sent<'py>> {
        Ok(match self {
            Self::Gateway(route) => {
                let (id, header) = route.credentials(py, engine, number)?;
                Sent {
                    url: route.url.bind(py).clone(),
                    id,
                    header: Some(header),
                }
            }
            Self::List(listed) => {
                // A list's sessions never rotate (the config refuses it): number = index.
                let Listed { url, header, .. } = &listed[number as usize];
                Sent {
                    url: url.bind(py).clone(),
                    id: PyString::new(py, engine.session(number)?.as_str()),
                    header: header.as_ref().map(|header| header.bind(py).clone()),
                }
            }
        })
    }

    pub fn is_list(&self) -> bool {
        matches!(self, Self::List(_))
    }

    /// Whether `proxy` (a `meta["proxy"]` value) is a URL this route sends attempts to. With a
    /// list, a scan: only for a copy switched off after an attempt (`leave_alone`).
    pub fn is_ours(&self, proxy: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = proxy.py();
        match self {
            Self::Gateway(GatewayRoute { url, .. }) => proxy.eq(url.bind(py)),
            Self::List(listed) => {
                for entry in listed {
                    if proxy.eq(entry.url.bind(py))? || proxy.eq(entry.plain_url.bind(py))? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }
}

impl GatewayRoute {
    fn credentials<'py>(
        &self,
        py: Python<'py>,
        engine: &Engine,
        number: u64,
    ) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyBytes>)> {
        let Some(cache) = &self.cache else {
            return self.make(py, engine, number);
        };
        let entries = cache.lock();
        let at = (number % entries.len() as u64) as usize;
        let found = entries[at]
            .as_ref()
            .filter(|entry| entry.number == number)
            .map(|Credentials { id, header, .. }| (id.bind(py).clone(), header.bind(py).clone()));
        drop(entries);
        if let Some((id, header)) = found {
            if self.share_ids {
                return Ok((id, header));
            }
            let id = PyString::new(py, &id.to_cow()?);
            return Ok((id, header));
        }
        // Made with the lock released (making a Python object is no place to hold it).
        let (id, header) = self.make(py, engine, number)?;
        cache.lock()[at] = Some(Credentials {
            number,
            id: id.clone().unbind(),
            header: header.clone().unbind(),
        });
        Ok((id, header))
    }

    fn make<'py>(
        &self,
        py: Python<'py>,
        engine: &Engine,
        number: u64,
    ) -> PyResult<(Bound<'py, PyString>, Bound<'py, PyBytes>)> {
        let session = engine.session(number)?;
        let gateway = &self.gateway;
        let header = PyBytes::new_with(py, gateway.proxy_authorization_len(&session), |out| {
            gateway.write_proxy_authorization(&session, out);
            Ok(())
        })?;
        Ok((PyString::from_bytes(py, session.as_bytes())?, header))
    }
}

/// With a list, the proxy may change between attempts of a request. Scrapy's
/// HttpProxyMiddleware drops a `Proxy-Authorization` header it noted for another proxy, so
/// note it for this one (`key`: its meta key); and a proxy without credentials must not keep
/// the header of the previous attempt's proxy.
pub fn note_auth_proxy(
    meta: &Bound<'_, PyDict>,
    key: Option<&Bound<'_, PyString>>,
    url: &Bound<'_, PyString>,
    has_header: bool,
) -> PyResult<bool> {
    let Some(key) = key else {
        return Ok(has_header);
    };
    if has_header {
        meta.set_item(key, url)?;
        return Ok(true);
    }
    if meta.contains(key)? {
        meta.del_item(key)?;
    }
    Ok(false)
}
