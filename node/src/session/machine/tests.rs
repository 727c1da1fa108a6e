use super::*;
use lamina_protocol::{EndsAt, SamplingSettings, WireDType, WireTensor};

fn host(start: u32, end: u32) -> HostInfo {
    HostInfo {
        node_name: "t".into(),
        model_id: ModelId::from_bytes([7; 32]),
        layers: LayerRange::new(start, end).unwrap(),
        n_layers: 5,
        hidden_dim: 4,
        vocab_size: 10,
        context_length: 16,
        max_step_rows: 6,
    }
}

fn open(start: u32, end: u32) -> OpenSession {
    OpenSession {
        session_id: SessionId::from(1u128),
        model_id: ModelId::from_bytes([7; 32]),
        layers: LayerRange::new(start, end).unwrap(),
        max_length: 8,
        activation_dtype: WireDType::F32,
        sampling: Some(SamplingSettings::greedy()),
        return_logits: false,
        next_hops: vec![],
        ends: EndsAt::Hops,
        trace_id: None,
    }
}

fn fwd(step: u64, pos: u32, input: ForwardInput) -> Forward {
    Forward {
        session_id: SessionId::from(1u128),
        step,
        start_pos: pos,
        input,
    }
}

fn hidden(rows: u32, width: u32) -> ForwardInput {
    let n = (rows * width) as usize;
    ForwardInput::Hidden(
        WireTensor::from_f32(&[rows, width], &vec![0.0; n], WireDType::F16).unwrap(),
    )
}

#[test]
fn happy_path_then_close() {
    let mut m = StreamMachine::new(host(0, 5));
    let h = Hello::new(ModelId::from_bytes([7; 32]), "c");
    assert!(m.on_hello(&h).is_ok());
    let o = open(0, 5);
    let role = m.check_open(&o, true).unwrap();
    assert_eq!(
        role,
        Role::Sample {
            return_logits: false
        }
    );
    m.opened(&o, role);
    let f = fwd(0, 0, ForwardInput::Tokens(vec![1, 2, 3]));
    assert_eq!(m.check_forward(&f), Ok(3));
    m.forwarded(f.step, f.rows());
    let f = fwd(1, 3, ForwardInput::Tokens(vec![4]));
    assert_eq!(m.check_forward(&f), Ok(1));
    m.forwarded(f.step, f.rows());
    assert_eq!(m.session().unwrap().position, 4);
    assert!(m.check_close(SessionId::from(1u128)).is_ok());
    m.closed();
    assert!(m.is_closed());
}

#[test]
fn refusals_have_codes_and_leave_state() {
    let mut m = StreamMachine::new(host(2, 4));
    let f = fwd(0, 0, hidden(1, 4));
    assert_eq!(
        m.check_forward(&f).unwrap_err().code,
        ErrorCode::UnknownSession
    );
    assert_eq!(
        m.check_open(&open(2, 4), true).unwrap_err().code,
        ErrorCode::UnexpectedMessage
    );
    let wrong = Hello::new(ModelId::from_bytes([8; 32]), "c");
    assert_eq!(m.on_hello(&wrong).unwrap_err().code, ErrorCode::WrongModel);
    m.on_hello(&Hello::new(ModelId::from_bytes([7; 32]), "c"))
        .unwrap();
    assert_eq!(
        m.check_open(&open(0, 4), true).unwrap_err().code,
        ErrorCode::LayerMismatch
    );
    assert_eq!(
        m.check_open(&open(2, 4), false).unwrap_err().code,
        ErrorCode::SessionLimit
    );
    let mut big = open(2, 4);
    big.max_length = 17;
    assert_eq!(
        m.check_open(&big, true).unwrap_err().code,
        ErrorCode::ContextOverflow
    );
    let o = open(2, 4);
    let role = m.check_open(&o, true).unwrap();
    assert_eq!(role, Role::ReturnHidden);
    m.opened(&o, role);
    assert_eq!(
        m.check_open(&o, true).unwrap_err().code,
        ErrorCode::SessionExists
    );
    assert_eq!(
        m.check_forward(&fwd(0, 0, hidden(1, 5))).unwrap_err().code,
        ErrorCode::BadTensor
    );
    assert_eq!(
        m.check_forward(&fwd(0, 0, ForwardInput::Tokens(vec![1])))
            .unwrap_err()
            .code,
        ErrorCode::BadTensor
    );
    assert_eq!(
        m.check_forward(&fwd(0, 1, hidden(1, 4))).unwrap_err().code,
        ErrorCode::StepOutOfOrder
    );
    assert_eq!(
        m.check_forward(&fwd(0, 0, hidden(9, 4))).unwrap_err().code,
        ErrorCode::ContextOverflow
    );
    assert_eq!(
        m.check_forward(&fwd(0, 0, hidden(7, 4))).unwrap_err().code,
        ErrorCode::OverLimit,
        "7 rows fit the context but not one step of at most 6"
    );
    assert!(m.check_forward(&fwd(0, 0, hidden(6, 4))).is_ok());
    let mut other = fwd(0, 0, hidden(1, 4));
    other.session_id = SessionId::from(2u128);
    assert_eq!(
        m.check_forward(&other).unwrap_err().code,
        ErrorCode::UnknownSession
    );
    let ok = fwd(0, 0, hidden(2, 4));
    assert_eq!(m.check_forward(&ok), Ok(2));
    m.forwarded(ok.step, ok.rows());
    assert_eq!(
        m.check_forward(&fwd(0, 2, hidden(1, 4))).unwrap_err().code,
        ErrorCode::StepOutOfOrder
    );
    assert_eq!(
        m.check_close(SessionId::from(3u128)).unwrap_err().code,
        ErrorCode::UnknownSession
    );
}

#[test]
fn first_hop_checks_token_ids_and_last_needs_sampling() {
    let mut m = StreamMachine::new(host(0, 5));
    m.on_hello(&Hello::new(ModelId::from_bytes([7; 32]), "c"))
        .unwrap();
    let mut o = open(0, 5);
    o.sampling = None;
    assert_eq!(
        m.check_open(&o, true).unwrap_err().code,
        ErrorCode::InvalidMessage
    );
    let o = open(0, 5);
    let role = m.check_open(&o, true).unwrap();
    m.opened(&o, role);
    assert_eq!(
        m.check_forward(&fwd(0, 0, ForwardInput::Tokens(vec![10])))
            .unwrap_err()
            .code,
        ErrorCode::InvalidMessage
    );
    assert_eq!(
        m.check_forward(&fwd(0, 0, hidden(1, 4))).unwrap_err().code,
        ErrorCode::BadTensor
    );
}

#[test]
fn a_session_may_run_part_of_the_loaded_range() {
    // Loaded 0..4 of 4 layers (first and last); a session for 1..4 samples, one for
    // 0..2 forwards, one for 2..6 is refused.
    let mut m = StreamMachine::new(HostInfo {
        n_layers: 4,
        ..host(0, 4)
    });
    m.on_hello(&Hello::new(ModelId::from_bytes([7; 32]), "c"))
        .unwrap();
    let tail = open(1, 4);
    assert!(m.check_open(&open(2, 5), true).is_err());
    assert!(matches!(m.check_open(&tail, true), Ok(Role::Sample { .. })));
    let mut head = open(0, 2);
    head.sampling = None;
    head.next_hops = vec![lamina_protocol::HopAddr {
        layers: LayerRange::new(2, 4).unwrap(),
        addr: "127.0.0.1:1".into(),
        peer_id: vec![1; 38],
    }];
    assert_eq!(m.check_open(&head, true), Ok(Role::Forward));
    m.opened(&head, Role::Forward);
    assert_eq!(m.host().layers, LayerRange::new(0, 2).unwrap());
}

#[test]
fn a_session_whose_entry_runs_the_ends_takes_and_gives_hidden_states() {
    // A whole-model hop: it would embed and sample; with the ends at the entry it does
    // neither.
    let mut m = StreamMachine::new(host(0, 5));
    assert!(m
        .on_hello(&Hello::new(ModelId::from_bytes([7; 32]), "c"))
        .is_ok());
    let mut o = open(0, 5);
    o.sampling = None;
    o.ends = EndsAt::Entry;
    let role = m.check_open(&o, true).unwrap();
    assert_eq!(role, Role::ReturnLast);
    m.opened(&o, role);
    assert_eq!(
        m.check_forward(&fwd(0, 0, ForwardInput::Tokens(vec![1])))
            .unwrap_err()
            .code,
        ErrorCode::BadTensor,
        "token ids are refused"
    );
    assert_eq!(m.check_forward(&fwd(0, 0, hidden(3, 4))).unwrap(), 3);
    // Without the ends, the last hop still needs sampling settings.
    let mut m = StreamMachine::new(host(0, 5));
    assert!(m
        .on_hello(&Hello::new(ModelId::from_bytes([7; 32]), "c"))
        .is_ok());
    let mut o = open(0, 5);
    o.sampling = None;
    assert_eq!(
        m.check_open(&o, true).unwrap_err().code,
        ErrorCode::InvalidMessage
    );
}

/// Steps increase strictly even at the end of the numbers: `next_step` saturates, so a step
/// numbered u64::MAX was accepted twice (found writing the `stream_machine` fuzz target's
/// strictly-increasing-steps invariant).
#[test]
fn a_step_numbered_u64_max_is_refused() {
    let mut m = StreamMachine::new(host(0, 5));
    m.on_hello(&Hello::new(ModelId::from_bytes([7; 32]), "c"))
        .unwrap();
    let o = open(0, 5);
    let role = m.check_open(&o, true).unwrap();
    m.opened(&o, role);
    let last = fwd(u64::MAX - 1, 0, ForwardInput::Tokens(vec![1]));
    assert_eq!(m.check_forward(&last), Ok(1));
    m.forwarded(last.step, 1);
    let again = fwd(u64::MAX, 1, ForwardInput::Tokens(vec![2]));
    let before = m.session().cloned();
    assert_eq!(
        m.check_forward(&again).unwrap_err().code,
        ErrorCode::StepOutOfOrder
    );
    assert_eq!(
        m.session().cloned(),
        before,
        "a refused step changes nothing"
    );
    assert_eq!(m.session().unwrap().next_step, u64::MAX);
}
