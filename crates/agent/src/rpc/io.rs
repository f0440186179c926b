//! Process I/O RPCs: ReadStdout, ReadStderr, WriteStdin, CloseStdin, TtyWinResize.

use protobuf::well_known_types::empty::Empty;
use protocols::agent::{
    CloseStdinRequest, ReadStreamRequest, ReadStreamResponse, TtyWinResizeRequest,
    WriteStreamRequest, WriteStreamResponse,
};

use crate::agent::Agent;
use crate::error::Result;

pub async fn read_stdout(agent: &Agent, req: ReadStreamRequest) -> Result<ReadStreamResponse> {
    read(agent, req, false).await
}

pub async fn read_stderr(agent: &Agent, req: ReadStreamRequest) -> Result<ReadStreamResponse> {
    read(agent, req, true).await
}

async fn read(agent: &Agent, req: ReadStreamRequest, stderr: bool) -> Result<ReadStreamResponse> {
    let data = agent
        .containers
        .read(&req.container_id, &req.exec_id, stderr, req.len)
        .await?;
    let mut resp = ReadStreamResponse::new();
    resp.data = data;
    Ok(resp)
}

pub async fn write_stdin(agent: &Agent, req: WriteStreamRequest) -> Result<WriteStreamResponse> {
    let n = agent
        .containers
        .write_stdin(&req.container_id, &req.exec_id, &req.data)
        .await?;
    let mut resp = WriteStreamResponse::new();
    resp.len = n as u32;
    Ok(resp)
}

pub async fn close_stdin(agent: &Agent, req: CloseStdinRequest) -> Result<Empty> {
    agent
        .containers
        .close_stdin(&req.container_id, &req.exec_id)
        .await?;
    Ok(Empty::new())
}

pub async fn tty_win_resize(agent: &Agent, req: TtyWinResizeRequest) -> Result<Empty> {
    agent
        .containers
        .resize_tty(&req.container_id, &req.exec_id, req.row, req.column)
        .await?;
    Ok(Empty::new())
}
