//! septum's eBPF loader: loads the TC programs built from `datapath-ebpf`, pins programs and maps
//! under a versioned bpffs directory, attaches `from_pod`/`to_pod` to a pod's host-side veth with
//! TCX links (kernels >= 6.6) or clsact + direct-action filters, and hands out typed map handles
//! and the flow-event reader.
//!
//! Restart safety: maps, programs and TCX links are pinned, and clsact filters live in the
//! qdisc, so enforcement continues while no loader runs. A new loader adopts the pinned maps
//! (same kernel objects, nothing rewritten) and atomically swaps its freshly loaded programs
//! into the existing links or filters ([`Datapath::attach`]): no packet ever meets an interface
//! without a program.
//!
//! Layout safety: a pinned map is reused only if its type, key size, value size and size match
//! what this build expects ([`LayoutMismatch`](DatapathError::LayoutMismatch)); otherwise loading
//! is refused, or, with [`DatapathOptions::migrate`], the stale pin is removed and a fresh map
//! created (its contents are the agent's to rewrite).

mod contents;
mod events;
mod maps;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapInfo, MapType, PerCpuArray},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};
pub use contents::{ContentsDiff, MapContents, WriteStats};
pub use events::{AsyncEventReader, EventReader, decode_event};
pub use maps::{
    ConntrackMap, DiffStats, EndpointsMap, IpCacheMap, LocalAddrsMap, MapDiff, PolicyMap,
    ServicesMap,
};
use septum_datapath_common::{
    COUNTER_COUNT, Counter, CtEntry, CtKey, DatapathConfig, EndpointInfo, FragEntry, FragKey,
    IpCacheEntry, IpPrefixData, LAYOUT_VERSION, PolicyEntry, PolicyKeyData, ServiceEntry,
    ServiceKey, map_names, map_sizes, program_names,
};

/// The compiled eBPF object (`septum-tc`), built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/septum-tc"));

/// Default root of septum's bpffs pins.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/septum";

/// Priority and handle of septum's clsact filters (fixed, so a restart can replace them).
const NL_PRIORITY: u16 = 0x5e;
const NL_HANDLE: u32 = 1;

/// How programs are attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links (kernel >= 6.6), pinned so they outlive the loader.
    Tcx,
    /// A clsact qdisc with direct-action cls_bpf filters (any kernel).
    Netlink,
}

impl AttachMode {
    /// TCX where the kernel has it, clsact otherwise.
    pub fn detect() -> Self {
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        if tcx { Self::Tcx } else { Self::Netlink }
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcx" => Ok(Self::Tcx),
            "netlink" | "clsact" => Ok(Self::Netlink),
            "auto" => Ok(Self::detect()),
            other => Err(format!(
                "unknown attach mode {other:?} (expected tcx, netlink or auto)"
            )),
        }
    }
}

/// What [`Datapath::load`] does.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// Pin root; the layout directory `v{LAYOUT_VERSION}` lives below it. `None` loads private,
    /// unpinned maps (tests, benchmarks).
    pub pin_root: Option<PathBuf>,
    pub attach_mode: AttachMode,
    /// Remove pinned maps whose layout differs instead of refusing to load.
    pub migrate: bool,
    /// Conntrack size override (unpinned loads only), to keep test processes small.
    pub conntrack_entries: Option<u32>,
    /// Policy map size override (unpinned loads only).
    pub policy_entries: Option<u32>,
    pub config: DatapathConfig,
}

impl Default for DatapathOptions {
    fn default() -> Self {
        Self {
            pin_root: Some(PathBuf::from(DEFAULT_PIN_ROOT)),
            attach_mode: AttachMode::detect(),
            migrate: false,
            conntrack_entries: None,
            policy_entries: None,
            config: DatapathConfig::DEFAULT,
        }
    }
}

impl DatapathOptions {
    /// Private maps, nothing pinned: for tests and benchmarks.
    pub fn unpinned() -> Self {
        Self {
            pin_root: None,
            conntrack_entries: Some(65_536),
            policy_entries: Some(262_144),
            ..Self::default()
        }
    }
}

/// Errors of the loader.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("the eBPF object is empty: septum-datapath was built with SEPTUM_SKIP_EBPF=1")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "pinned map {path} has layout {found}, this build expects {expected}; refusing to reuse it (load with migrate to replace it)"
    )]
    LayoutMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("interface {ifname}: {message}")]
    Attach { ifname: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DatapathError + '_ {
    move |source| DatapathError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The expected kernel shape of each map: (name, type, key size, value size, max entries).
fn expected_layout() -> [(&'static str, MapType, u32, u32, u32); 11] {
    use std::mem::size_of;
    let lpm = |k: usize| (k + 4) as u32;
    [
        (
            map_names::ENDPOINTS,
            MapType::Hash,
            4,
            size_of::<EndpointInfo>() as u32,
            map_sizes::ENDPOINTS,
        ),
        (
            map_names::IPCACHE,
            MapType::LpmTrie,
            lpm(size_of::<IpPrefixData>()),
            size_of::<IpCacheEntry>() as u32,
            map_sizes::IPCACHE,
        ),
        (
            map_names::POLICY,
            MapType::LpmTrie,
            lpm(size_of::<PolicyKeyData>()),
            size_of::<PolicyEntry>() as u32,
            map_sizes::POLICY,
        ),
        (
            map_names::SERVICES,
            MapType::Hash,
            size_of::<ServiceKey>() as u32,
            size_of::<ServiceEntry>() as u32,
            map_sizes::SERVICES,
        ),
        (
            map_names::CONNTRACK,
            MapType::LruHash,
            size_of::<CtKey>() as u32,
            size_of::<CtEntry>() as u32,
            map_sizes::CONNTRACK,
        ),
        (
            map_names::FRAGMENTS,
            MapType::LruHash,
            size_of::<FragKey>() as u32,
            size_of::<FragEntry>() as u32,
            map_sizes::FRAGMENTS,
        ),
        (
            map_names::DROP_EVENTS,
            MapType::LruHash,
            size_of::<CtKey>() as u32,
            8,
            map_sizes::DROP_EVENTS,
        ),
        (
            map_names::EVENTS,
            MapType::RingBuf,
            0,
            0,
            map_sizes::EVENTS_BYTES,
        ),
        (
            map_names::COUNTERS,
            MapType::PerCpuArray,
            4,
            8,
            COUNTER_COUNT,
        ),
        (
            map_names::CONFIG,
            MapType::Array,
            4,
            size_of::<DatapathConfig>() as u32,
            1,
        ),
        (
            map_names::LOCAL_ADDRS,
            MapType::Hash,
            size_of::<IpPrefixData>() as u32,
            4,
            map_sizes::LOCAL_ADDRS,
        ),
    ]
}

/// The loaded datapath: programs, typed maps and where they are pinned.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    attach_mode: AttachMode,
    /// Whether existing pinned maps were adopted (a restart) rather than created.
    adopted: bool,
    pub endpoints: EndpointsMap,
    pub ipcache: IpCacheMap,
    pub policy: PolicyMap,
    pub services: ServicesMap,
    pub conntrack: ConntrackMap,
    pub local_addrs: LocalAddrsMap,
    counters: PerCpuArray<MapData, u64>,
    config: Array<MapData, DatapathConfig>,
    events: Option<aya::maps::RingBuf<MapData>>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .field("attach_mode", &self.attach_mode)
            .field("adopted", &self.adopted)
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads (or adopts) maps and programs. Nothing is attached yet.
    pub fn load(opts: &DatapathOptions) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let pin_dir = opts
            .pin_root
            .as_ref()
            .map(|root| root.join(format!("v{LAYOUT_VERSION}")));
        let mut loader = EbpfLoader::new();
        let mut adopted = false;
        let pin_paths: Vec<(&'static str, PathBuf)>;
        if let Some(dir) = &pin_dir {
            for sub in ["", "progs", "links"] {
                let d = dir.join(sub);
                fs::create_dir_all(&d).map_err(io_err(&d))?;
            }
            adopted = check_pinned_layout(dir, opts.migrate)?;
            pin_paths = map_names::ALL
                .iter()
                .map(|name| (*name, dir.join(name)))
                .collect();
            for (name, path) in &pin_paths {
                loader.map_pin_path(name, path.as_path());
            }
        } else {
            if let Some(n) = opts.conntrack_entries {
                loader.map_max_entries(map_names::CONNTRACK, n);
            }
            if let Some(n) = opts.policy_entries {
                loader.map_max_entries(map_names::POLICY, n);
            }
        }
        let mut ebpf = loader.load(OBJECT)?;

        for name in [
            program_names::FROM_POD,
            program_names::TO_POD,
            program_names::BENCH_EMPTY,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DatapathError::Program {
                    name,
                    source: ProgramError::NotLoaded,
                })?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DatapathError::Map {
                name,
                source: aya::maps::MapError::InvalidName {
                    name: name.to_string(),
                },
            })
        };
        let map_err = |name: &'static str| move |source| DatapathError::Map { name, source };
        let endpoints = EndpointsMap(
            HashMap::try_from(take(&mut ebpf, map_names::ENDPOINTS)?)
                .map_err(map_err(map_names::ENDPOINTS))?,
        );
        let ipcache = IpCacheMap(
            LpmTrie::try_from(take(&mut ebpf, map_names::IPCACHE)?)
                .map_err(map_err(map_names::IPCACHE))?,
        );
        let policy = PolicyMap(
            LpmTrie::try_from(take(&mut ebpf, map_names::POLICY)?)
                .map_err(map_err(map_names::POLICY))?,
        );
        let services = ServicesMap(
            HashMap::try_from(take(&mut ebpf, map_names::SERVICES)?)
                .map_err(map_err(map_names::SERVICES))?,
        );
        let conntrack = ConntrackMap(
            HashMap::try_from(take(&mut ebpf, map_names::CONNTRACK)?)
                .map_err(map_err(map_names::CONNTRACK))?,
        );
        let local_addrs = LocalAddrsMap(
            HashMap::try_from(take(&mut ebpf, map_names::LOCAL_ADDRS)?)
                .map_err(map_err(map_names::LOCAL_ADDRS))?,
        );
        let counters = PerCpuArray::try_from(take(&mut ebpf, map_names::COUNTERS)?)
            .map_err(map_err(map_names::COUNTERS))?;
        let mut config: Array<MapData, DatapathConfig> =
            Array::try_from(take(&mut ebpf, map_names::CONFIG)?)
                .map_err(map_err(map_names::CONFIG))?;
        config
            .set(0, opts.config, 0)
            .map_err(map_err(map_names::CONFIG))?;
        let events = aya::maps::RingBuf::try_from(take(&mut ebpf, map_names::EVENTS)?)
            .map_err(map_err(map_names::EVENTS))?;

        let mut dp = Self {
            ebpf,
            pin_dir,
            attach_mode: opts.attach_mode,
            adopted,
            endpoints,
            ipcache,
            policy,
            services,
            conntrack,
            local_addrs,
            counters,
            config,
            events: Some(events),
        };
        dp.pin_programs()?;
        tracing::info!(
            pin.dir = ?dp.pin_dir,
            attach.mode = ?dp.attach_mode,
            adopted = dp.adopted,
            "datapath loaded"
        );
        Ok(dp)
    }

    /// Whether this load adopted maps pinned by an earlier loader.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn attach_mode(&self) -> AttachMode {
        self.attach_mode
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    fn pin_programs(&mut self) -> Result<(), DatapathError> {
        let Some(dir) = self.pin_dir.clone() else {
            return Ok(());
        };
        for name in [program_names::FROM_POD, program_names::TO_POD] {
            let path = dir.join("progs").join(name);
            // Replace the previous loader's pin: the kernel keeps the old program alive for as
            // long as a link or filter still uses it.
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
            self.classifier(name)?
                .pin(&path)
                .map_err(|e| DatapathError::Io {
                    path: path.clone(),
                    source: io::Error::other(e.to_string()),
                })?;
        }
        Ok(())
    }

    fn classifier(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        self.ebpf
            .program_mut(name)
            .ok_or(DatapathError::Program {
                name,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })
    }

    /// The loaded program `name` (`from_pod` or `to_pod`), e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&self, name: &'static str) -> Result<&SchedClassifier, DatapathError> {
        self.ebpf
            .program(name)
            .ok_or(DatapathError::Program {
                name,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })
    }

    /// The kernel's run statistics of program `name`: runs and total run time, counted only
    /// while `kernel.bpf_stats_enabled` is 1 (see [`RunStats::enable`]). Read from the program
    /// fd's `fdinfo`, as `bpftool prog show` does.
    pub fn run_stats(&self, name: &'static str) -> Result<RunStats, DatapathError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let prog = self.program(name)?;
        let fd = prog
            .fd()
            .map_err(|source| DatapathError::Program { name, source })?;
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let path = PathBuf::from(path);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        Ok(RunStats::parse(&text))
    }

    /// Runs `program` once per `repeat` on `packet` (an Ethernet frame) as if it arrived on
    /// `ifindex` (which must exist in the caller's network namespace). Returns the TC verdict
    /// and the kernel's average run time.
    pub fn test_run(
        &self,
        program: &'static str,
        packet: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(i32, std::time::Duration), DatapathError> {
        let skb = TestSkb {
            ifindex,
            ..TestSkb::default()
        };
        self.test_run_skb(program, packet, skb, repeat)
            .map(|(verdict, took, _)| (verdict, took))
    }

    /// [`test_run`](Self::test_run) with the packet's metadata (`skb->mark`, the interface it
    /// was received from) given, and the mark the program left on it returned.
    pub fn test_run_skb(
        &self,
        program: &'static str,
        packet: &[u8],
        skb: TestSkb,
        repeat: u32,
    ) -> Result<(i32, std::time::Duration, u32), DatapathError> {
        // struct __sk_buff: mark at byte 8, ingress_ifindex at 36, ifindex at 40; everything
        // else zero (the fields BPF_PROG_TEST_RUN accepts).
        let mut ctx = [0u8; 192];
        ctx[8..12].copy_from_slice(&skb.mark.to_ne_bytes());
        ctx[36..40].copy_from_slice(&skb.ingress_ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&skb.ifindex.to_ne_bytes());
        let mut ctx_out = [0u8; 192];
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.ctx_out = Some(&mut ctx_out);
        opts.repeat = repeat.max(1);
        let res =
            self.program(program)?
                .test_run(opts)
                .map_err(|source| DatapathError::Program {
                    name: program,
                    source,
                })?;
        let mark = u32::from_ne_bytes(ctx_out[8..12].try_into().expect("4 bytes"));
        Ok((res.return_value as i32, res.duration, mark))
    }

    /// Attaches `from_pod` (TC ingress) and `to_pod` (TC egress) to the host-side interface
    /// `ifname`. If septum's programs are already attached there (a previous loader), they are
    /// replaced atomically; otherwise they are attached anew.
    pub fn attach(&mut self, ifname: &str) -> Result<(), DatapathError> {
        let attach_err = |e: &dyn std::fmt::Display| DatapathError::Attach {
            ifname: ifname.to_string(),
            message: e.to_string(),
        };
        let ifindex = ifindex_of(ifname).map_err(|e| attach_err(&e))?;
        if self.attach_mode == AttachMode::Netlink {
            match tc::qdisc_add_clsact(ifname) {
                Ok(()) => {}
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(attach_err(&e)),
            }
        }
        let pin_dir = self.pin_dir.clone();
        let mode = self.attach_mode;
        for (name, ty) in [
            (program_names::FROM_POD, TcAttachType::Ingress),
            (program_names::TO_POD, TcAttachType::Egress),
        ] {
            let prog = self.classifier(name)?;
            match mode {
                AttachMode::Tcx => {
                    let pin = pin_dir
                        .as_ref()
                        .map(|d| d.join("links").join(format!("{ifindex}-{name}")));
                    let existing = pin.as_ref().and_then(|p| PinnedLink::from_pin(p).ok());
                    let id = match existing {
                        Some(old) => {
                            let link: SchedClassifierLink = FdLink::from(old)
                                .try_into()
                                .map_err(|e: aya::programs::links::LinkError| attach_err(&e))?;
                            prog.attach_to_link(link).map_err(|e| attach_err(&e))?
                        }
                        None => prog
                            .attach_with_options(
                                ifname,
                                ty,
                                TcAttachOptions::TcxOrder(LinkOrder::default()),
                            )
                            .map_err(|e| attach_err(&e))?,
                    };
                    let link = prog.take_link(id).map_err(|e| attach_err(&e))?;
                    let fd: FdLink = link
                        .try_into()
                        .map_err(|e: aya::programs::links::LinkError| attach_err(&e))?;
                    match pin {
                        Some(path) => {
                            let _ = fs::remove_file(&path);
                            fd.pin(&path).map_err(|e| attach_err(&e))?;
                        }
                        // Unpinned datapath: the link lives as long as this process.
                        None => std::mem::forget(fd),
                    }
                }
                AttachMode::Netlink => {
                    let handle = TcHandle::from(NL_HANDLE);
                    let existing =
                        SchedClassifierLink::attached(ifname, ty, NL_PRIORITY, handle, None)
                            .map_err(|e| attach_err(&e))?;
                    // Replace a filter left by a previous loader (no NLM_F_CREATE: fails if
                    // there is none), else create it.
                    let id = match prog.attach_to_link(existing) {
                        Ok(id) => id,
                        Err(_) => prog
                            .attach_with_options(
                                ifname,
                                ty,
                                TcAttachOptions::Netlink(NlOptions {
                                    priority: NL_PRIORITY,
                                    handle,
                                    classid: None,
                                }),
                            )
                            .map_err(|e| attach_err(&e))?,
                    };
                    // The filter lives in the qdisc; forgetting the handle keeps it attached
                    // after this process exits.
                    let link = prog.take_link(id).map_err(|e| attach_err(&e))?;
                    std::mem::forget(link);
                }
            }
        }
        tracing::debug!(ifname, ifindex, mode = ?mode, "programs attached");
        Ok(())
    }

    /// Detaches septum's programs from `ifname` (no error if the interface or the attachment
    /// is already gone) and removes its link pins.
    pub fn detach(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        if let Some(dir) = &self.pin_dir {
            for name in [program_names::FROM_POD, program_names::TO_POD] {
                let path = dir.join("links").join(format!("{ifindex}-{name}"));
                if let Ok(pinned) = PinnedLink::from_pin(&path) {
                    // Unpinning and dropping the last reference destroys the link.
                    drop(pinned.unpin());
                }
            }
        }
        if self.attach_mode == AttachMode::Netlink {
            for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
                if let Ok(link) = SchedClassifierLink::attached(
                    ifname,
                    ty,
                    NL_PRIORITY,
                    TcHandle::from(NL_HANDLE),
                    None,
                ) {
                    drop(link); // Drop detaches the filter; a missing one is not an error.
                }
            }
        }
        Ok(())
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        sum_counters(&self.counters)
    }

    /// A second, read-only handle on conntrack and the counters (duplicated map file
    /// descriptors, the same kernel maps), for a reader on another thread or task, such as the
    /// flow pipeline reading conntrack's per-connection counters.
    pub fn observer(&self) -> Result<Observer, DatapathError> {
        use aya::maps::IterableMap as _;
        use std::os::fd::AsFd as _;
        fn dup(name: &'static str, data: &MapData) -> Result<MapData, DatapathError> {
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| DatapathError::Map {
                    name,
                    source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "dup",
                        io_error: e,
                    }),
                })?;
            MapData::from_fd(fd).map_err(|source| DatapathError::Map { name, source })
        }
        let ct = dup(map_names::CONNTRACK, self.conntrack.0.map())?;
        let counters = dup(map_names::COUNTERS, self.counters.map())?;
        Ok(Observer {
            conntrack: ConntrackMap(HashMap::try_from(aya::maps::Map::HashMap(ct)).map_err(
                |source| DatapathError::Map {
                    name: map_names::CONNTRACK,
                    source,
                },
            )?),
            counters: PerCpuArray::try_from(aya::maps::Map::PerCpuArray(counters)).map_err(
                |source| DatapathError::Map {
                    name: map_names::COUNTERS,
                    source,
                },
            )?,
        })
    }

    /// One counter, summed over CPUs.
    pub fn counter(&self, counter: Counter) -> Result<u64, DatapathError> {
        Ok(self
            .counters()?
            .into_iter()
            .find(|(c, _)| *c == counter)
            .map(|(_, v)| v)
            .unwrap_or(0))
    }

    /// Replaces the global datapath settings.
    pub fn set_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| DatapathError::Map {
                name: map_names::CONFIG,
                source,
            })
    }

    /// Takes the flow-event reader (once).
    pub fn take_events(&mut self) -> Option<EventReader> {
        self.events.take().map(EventReader::new)
    }
}

/// Read-only access to conntrack and the counters from outside the [`Datapath`] (see
/// [`Datapath::observer`]); `Send`, so it can live on its own thread.
pub struct Observer {
    /// Conntrack (read it; the datapath owns its entries).
    pub conntrack: ConntrackMap,
    counters: PerCpuArray<MapData, u64>,
}

impl Observer {
    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>, DatapathError> {
        sum_counters(&self.counters)
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

fn sum_counters(map: &PerCpuArray<MapData, u64>) -> Result<Vec<(Counter, u64)>, DatapathError> {
    let mut out = Vec::with_capacity(Counter::ALL.len());
    for (counter, _) in Counter::ALL {
        let values = map
            .get(&(counter as u32), 0)
            .map_err(|source| DatapathError::Map {
                name: map_names::COUNTERS,
                source,
            })?;
        out.push((counter, values.iter().sum()));
    }
    Ok(out)
}

/// Checks every existing pin in `dir` against the expected layout. Returns whether any map was
/// already pinned (an adoption).
fn check_pinned_layout(dir: &Path, migrate: bool) -> Result<bool, DatapathError> {
    let mut adopted = false;
    for name in map_names::RETIRED {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        if !migrate {
            return Err(DatapathError::LayoutMismatch {
                path,
                expected: "no such map (this layout replaced it)".into(),
                found: "a map of an earlier layout".into(),
            });
        }
        tracing::warn!(map = name, "removing the pinned map of an earlier layout");
        fs::remove_file(&path).map_err(io_err(&path))?;
    }
    for (name, ty, key, value, max) in expected_layout() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).map_err(|source| DatapathError::Map { name, source })?;
        let found_ty = info.map_type().ok();
        let ok = found_ty == Some(ty)
            && info.key_size() == key
            && info.value_size() == value
            && info.max_entries() == max;
        if ok {
            adopted = true;
            continue;
        }
        let expected = format!("{ty:?} key {key} value {value} entries {max}");
        let found = format!(
            "{found_ty:?} key {} value {} entries {}",
            info.key_size(),
            info.value_size(),
            info.max_entries()
        );
        if !migrate {
            return Err(DatapathError::LayoutMismatch {
                path,
                expected,
                found,
            });
        }
        tracing::warn!(map = name, %expected, %found, "removing pinned map with a stale layout");
        fs::remove_file(&path).map_err(io_err(&path))?;
    }
    Ok(adopted)
}

/// The metadata of a test packet ([`Datapath::test_run_skb`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestSkb {
    /// The interface the program runs on (must exist in the caller's network namespace).
    pub ifindex: u32,
    /// The interface the packet was received from (0: generated on this host).
    pub ingress_ifindex: u32,
    /// `skb->mark` on entry.
    pub mark: u32,
}

/// A program's kernel run statistics (`run_cnt`, `run_time_ns` of its fdinfo).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Runs counted.
    pub runs: u64,
    /// Total time in the program, ns.
    pub time_ns: u64,
}

impl RunStats {
    /// Parses `run_cnt:` and `run_time_ns:` out of a BPF program fd's fdinfo (zero when absent).
    pub fn parse(fdinfo: &str) -> Self {
        let field = |name: &str| {
            fdinfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            runs: field("run_cnt:"),
            time_ns: field("run_time_ns:"),
        }
    }

    /// What ran between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            runs: self.runs.saturating_sub(earlier.runs),
            time_ns: self.time_ns.saturating_sub(earlier.time_ns),
        }
    }

    /// Mean ns per run (NaN without runs).
    pub fn ns_per_run(self) -> f64 {
        self.time_ns as f64 / self.runs as f64
    }

    /// Turns the kernel's BPF run statistics on (`kernel.bpf_stats_enabled`), returning the
    /// previous setting for [`RunStats::restore`]. Statistics cost two clock reads per run.
    pub fn enable() -> io::Result<String> {
        const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let before = fs::read_to_string(PATH)?;
        fs::write(PATH, "1")?;
        Ok(before.trim().to_string())
    }

    /// Puts `kernel.bpf_stats_enabled` back as [`RunStats::enable`] found it.
    pub fn restore(previous: &str) -> io::Result<()> {
        fs::write("/proc/sys/kernel/bpf_stats_enabled", previous)
    }
}

/// Removes every pin under `pin_root/v{LAYOUT_VERSION}` (maps, programs, links). Links pinned
/// there are destroyed, so their programs detach.
pub fn remove_pins(pin_root: &Path) -> Result<(), DatapathError> {
    let dir = pin_root.join(format!("v{LAYOUT_VERSION}"));
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&dir)(e)),
    }
}

/// The ifindex of `ifname` in the current network namespace.
pub fn ifindex_of(ifname: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}
