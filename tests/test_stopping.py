import threading

import pytest

from dd_core.stopping import StopRequested, check_stop, clear_stop, request_stop, stop_reason


def test_a_stop_request_reaches_every_thread_with_its_first_reason():
    try:
        assert stop_reason() is None
        check_stop()  # nothing requested: nothing raised
        request_stop("SIGINT received")
        request_stop("a later reason")
        errors: list[BaseException] = []

        def loop() -> None:
            try:
                check_stop()
            except StopRequested as exc:
                errors.append(exc)

        worker = threading.Thread(target=loop)
        worker.start()
        worker.join()
        assert [str(e) for e in errors] == ["stopped: SIGINT received"] and stop_reason() == "SIGINT received"
    finally:
        clear_stop()
    assert stop_reason() is None
    check_stop()


def test_a_stop_is_not_an_input_error_and_is_never_retried():
    from tasks import NOT_RETRYABLE

    assert not issubclass(StopRequested, ValueError) and issubclass(StopRequested, NOT_RETRYABLE)
    with pytest.raises(StopRequested):
        try:
            request_stop("x")
            check_stop()
        finally:
            clear_stop()
