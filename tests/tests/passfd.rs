//! Pass-fd stdio through the real agent: the listener's unix-socket form
//! (`KATA_AGENT_PASSFD_ADDR`), where each stream connection names itself with a `<port>\n` line.
//! Bytes are checked exactly; the exit status comes after all output; a stream that never arrives
//! fails the request (bounded) and creates nothing.

#[path = "support/mini.rs"]
mod mini;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{ctx, AgentOptions};
use mini::{blob, rt, sh, Mini};
use protobuf::MessageField;
use protocols::agent;

/// The agent, the path of its pass-fd listener, and the directory holding it (removed on drop).
async fn fx(tag: &str) -> (Mini, PathBuf, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("kata-passfd-")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("passfd.sock");
    let opts = AgentOptions {
        env: vec![(
            "KATA_AGENT_PASSFD_ADDR",
            format!("unix://{}", sock.display()),
        )],
        ..Default::default()
    };
    (Mini::new(tag, opts).await, sock, dir)
}

/// Opens a stream and names it `port`.
fn stream(sock: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(sock).expect("connect to the pass-fd listener");
    writeln!(s, "{port}").unwrap();
    s
}

fn read_to_end_thread(mut s: UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    })
}

fn code(r: ttrpc::Result<protobuf::well_known_types::empty::Empty>) -> ttrpc::Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

#[test]
fn exec_stdio_through_streams_exact_bytes() {
    rt().block_on(async {
        let (fx, sock, _dir) = fx("pfexec").await;
        fx.run("c1", fx.spec("c1", sh("exec sleep 1000"))).await;
        let input = blob(3 << 20, 7);
        let (i, o, e) = (stream(&sock, 101), stream(&sock, 102), stream(&sock, 103));
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = "c1".into();
        req.exec_id = "x".into();
        req.process = MessageField::some(sh("cat; echo to-stderr >&2; exit 7"));
        req.stdin_port = 101;
        req.stdout_port = 102;
        req.stderr_port = 103;
        fx.exec_req(req).await.expect("ExecProcess with streams");
        let out = read_to_end_thread(o);
        let err = read_to_end_thread(e);
        let feed = {
            let input = input.clone();
            let mut i = i;
            std::thread::spawn(move || {
                i.write_all(&input).unwrap();
                // End of input is a half-close.
                i.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        assert_eq!(fx.wait("c1", "x").await, 7);
        feed.join().unwrap();
        let out = out.join().unwrap();
        assert_eq!(out.len(), input.len());
        assert!(out == input, "stdout differs from stdin");
        assert_eq!(err.join().unwrap(), b"to-stderr\n");
        fx.remove("c1").await;
        fx.finish().await;
    });
}

#[test]
fn container_init_streams_and_status_after_output() {
    rt().block_on(async {
        let (fx, sock, _dir) = fx("pfinit").await;
        // One write of 60000 bytes, small enough to sit in the socket buffer: nobody reads the
        // stream until WaitProcess has answered, and then everything (and the end of stream)
        // must already be there. (Many tiny writes would each become a socket buffer of their
        // own and could fill the socket before the end; real clients read while they wait.)
        let o = stream(&sock, 7001);
        let e = stream(&sock, 7002);
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "c2".into();
        req.OCI = MessageField::some(fx.spec(
            "c2",
            sh("dd if=/dev/zero bs=60000 count=1 2>/dev/null; echo bye >&2; exit 3"),
        ));
        req.stdout_port = 7001;
        req.stderr_port = 7002;
        fx.create_req(req).await.expect("CreateContainer with streams");
        fx.start("c2").await;
        assert_eq!(fx.wait("c2", "").await, 3);
        let expected = vec![0u8; 60000];
        for (mut s, want) in [(o, expected.as_slice()), (e, b"bye\n".as_slice())] {
            s.set_nonblocking(true).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!(
                        "after WaitProcess the stream must be complete and closed, got {e} after {} bytes",
                        got.len()
                    ),
                }
            }
            assert!(got == want, "stream content differs ({} bytes)", got.len());
        }
        fx.remove("c2").await;
        fx.finish().await;
    });
}

#[test]
fn stream_arriving_after_the_request_is_waited_for() {
    rt().block_on(async {
        let (fx, sock, _dir) = fx("pflate").await;
        fx.run("c3", fx.spec("c3", sh("exec sleep 1000"))).await;
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = "c3".into();
        req.exec_id = "late".into();
        req.process = MessageField::some(sh("echo late-output"));
        req.stdout_port = 55;
        let sock2 = sock.clone();
        let opener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            stream(&sock2, 55)
        });
        fx.exec_req(req)
            .await
            .expect("ExecProcess waits for its stream");
        let o = opener.join().unwrap();
        let out = read_to_end_thread(o).join().unwrap();
        assert_eq!(out, b"late-output\n");
        assert_eq!(fx.wait("c3", "late").await, 0);
        // A stream left on the RPCs still works next to it.
        fx.exec("c3", "plain", sh("echo plain")).await;
        assert_eq!(fx.read_all("c3", "plain", false).await, b"plain\n");
        assert_eq!(fx.wait("c3", "plain").await, 0);
        fx.remove("c3").await;
        fx.finish().await;
    });
}

#[test]
fn stream_that_never_arrives_is_a_bounded_error() {
    rt().block_on(async {
        let (fx, _sock, _dir) = fx("pfmissing").await;
        fx.run("c4", fx.spec("c4", sh("exec sleep 1000"))).await;
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = "c4".into();
        req.exec_id = "ghost".into();
        req.process = MessageField::some(sh("echo never"));
        req.stdout_port = 4242;
        assert_eq!(code(fx.exec_req(req).await), ttrpc::Code::NOT_FOUND);
        // Nothing was started.
        let mut w = agent::WaitProcessRequest::new();
        w.container_id = "c4".into();
        w.exec_id = "ghost".into();
        assert!(fx.c.wait_process(ctx(), &w).await.is_err());
        // Nor created.
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "c5".into();
        req.OCI = MessageField::some(fx.spec("c5", sh("true")));
        req.stdin_port = 4343;
        assert_eq!(code(fx.create_req(req).await), ttrpc::Code::NOT_FOUND);
        assert!(!fx.agent.run_dir.join("c5").exists());
        // One connection cannot carry two streams.
        let mut req = agent::ExecProcessRequest::new();
        req.container_id = "c4".into();
        req.exec_id = "twice".into();
        req.process = MessageField::some(sh("true"));
        req.stdout_port = 77;
        req.stderr_port = 77;
        assert_eq!(code(fx.exec_req(req).await), ttrpc::Code::INVALID_ARGUMENT);
        fx.remove("c4").await;
        fx.finish().await;
    });
}

#[test]
fn ports_without_a_listener_are_refused() {
    rt().block_on(async {
        let fx = Mini::new("pfnone", AgentOptions::default()).await;
        let mut req = agent::CreateContainerRequest::new();
        req.container_id = "c6".into();
        req.OCI = MessageField::some(fx.spec("c6", sh("true")));
        req.stdout_port = 1;
        assert_eq!(
            code(fx.create_req(req).await),
            ttrpc::Code::FAILED_PRECONDITION
        );
        fx.finish().await;
    });
}
