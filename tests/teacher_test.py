"""The pre-trained teacher: a near-chance one is called out before the cascade starts from it."""

from hsd_tf import teacher


def test_a_teacher_under_twice_chance_gets_a_warning_naming_its_accuracy():
    warning = teacher.near_chance_warning(0.1549, 10)
    assert warning.startswith("Warning: the teacher's validation accuracy is 0.1549, near chance (0.1000 for 10 ")
    assert teacher.near_chance_warning(0.2, 10) is None
    assert teacher.near_chance_warning(0.015, 100) is not None and teacher.near_chance_warning(0.02, 100) is None
    # Two classes: twice chance is perfect; a quarter of the way from chance to it is the line.
    assert teacher.near_chance_warning(0.9, 2) is None and teacher.near_chance_warning(0.6, 2) is not None
