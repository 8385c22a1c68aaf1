import threading

import pytest

from dd_core.ops.stop import NEVER, PROCESS, StopRequested, StopToken


def test_a_stop_request_reaches_every_thread_with_its_first_reason():
    try:
        assert PROCESS.reason() is None
        PROCESS.check()  # nothing requested: nothing raised
        PROCESS.request("SIGINT received")
        PROCESS.request("a later reason")
        errors: list[BaseException] = []

        def loop() -> None:
            try:
                PROCESS.check()
            except StopRequested as exc:
                errors.append(exc)

        worker = threading.Thread(target=loop)
        worker.start()
        worker.join()
        assert [str(e) for e in errors] == ["stopped: SIGINT received"] and PROCESS.reason() == "SIGINT received"
    finally:
        PROCESS.clear()
    assert PROCESS.reason() is None
    PROCESS.check()


def test_a_stop_is_not_an_input_error_and_is_never_retried():
    from tasks import NOT_RETRYABLE

    assert not issubclass(StopRequested, ValueError) and issubclass(StopRequested, NOT_RETRYABLE)
    with pytest.raises(StopRequested):
        try:
            PROCESS.request("x")
            PROCESS.check()
        finally:
            PROCESS.clear()


def test_a_condition_stops_while_its_block_lasts_and_survives_a_clear():
    token, why = StopToken(), ["the run lock was taken"]
    with token.stop_if(lambda: why[0]):
        token.clear()
        with pytest.raises(StopRequested, match="^stopped: the run lock was taken$"):
            token.check()
        why[0] = None
        token.check()  # a condition that no longer holds stops nothing
    why[0] = "again"
    token.check()  # outside the block the condition is gone
    assert token.reason() is None


def test_tokens_are_apart():
    token = StopToken()
    try:
        token.request("this run only")
        assert PROCESS.reason() is None and NEVER.reason() is None
        PROCESS.check()
        NEVER.check()
    finally:
        token.clear()


def test_the_process_token_travels_by_name_and_a_private_one_stays():
    import pickle

    from dd_core.ops.stop import NEVER, PROCESS, StopToken

    assert pickle.loads(pickle.dumps(PROCESS)) is PROCESS and pickle.loads(pickle.dumps(NEVER)) is NEVER
    with pytest.raises(TypeError, match="cannot leave its process"):
        pickle.dumps(StopToken())
