"""The PyTorch "Knowledge Distillation Tutorial" training code, as published, for comparison.

Kept as the tutorial writes it: a per-sample Dataset with ToTensor + Normalize transforms, a
DataLoader with num_workers=2, the teacher run forward inside every distillation step, and a
separate model class and loop per method. It is fed like torchvision's CIFAR10: uint8 HWC
images held in memory, turned into a PIL image and converted per sample.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as transforms
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from kdpipe.learn.models import DeepNN, LightNN


class InMemoryCIFAR(Dataset):
    """What torchvision.datasets.CIFAR10.__getitem__ does, over arrays held in memory."""

    def __init__(self, images_nchw: np.ndarray, labels: np.ndarray):
        self.data = np.ascontiguousarray(images_nchw.transpose(0, 2, 3, 1))  # HWC, as CIFAR10
        self.targets = labels.tolist()
        self.transform = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ])

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = Image.fromarray(self.data[index]), self.targets[index]
        return self.transform(img), target


def loaders(train, test, batch_size=128):
    return (DataLoader(InMemoryCIFAR(*train), batch_size=batch_size, shuffle=True, num_workers=2),
            DataLoader(InMemoryCIFAR(*test), batch_size=batch_size, shuffle=False, num_workers=2))


# The tutorial's modified models: same weights layout, extra outputs per method.
class ModifiedDeepNNCosine(DeepNN):
    def forward(self, x):
        x = self.features(x)
        flattened = torch.flatten(x, 1)
        return self.classifier(flattened), F.avg_pool1d(flattened, 2)


class ModifiedLightNNCosine(LightNN):
    def forward(self, x):
        x = self.features(x)
        flattened = torch.flatten(x, 1)
        return self.classifier(flattened), flattened


class ModifiedDeepNNRegressor(DeepNN):
    def forward(self, x):
        x = self.features(x)
        conv_feature_map = x
        return self.classifier(torch.flatten(x, 1)), conv_feature_map


class ModifiedLightNNRegressor(LightNN):
    def __init__(self, num_classes=10):
        super().__init__(num_classes)
        self.regressor = nn.Sequential(nn.Conv2d(16, 32, kernel_size=3, padding=1))

    def forward(self, x):
        x = self.features(x)
        regressor_output = self.regressor(x)
        return self.classifier(torch.flatten(x, 1)), regressor_output


def train(model, train_loader, epochs, learning_rate, device):
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(epochs):
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()


def test(model, test_loader, device):
    model.to(device)
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for inputs, labels in test_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            outputs = model(inputs)
            if isinstance(outputs, tuple):
                outputs = outputs[0]
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return 100 * correct / total


def train_knowledge_distillation(teacher, student, train_loader, epochs, learning_rate, T,
                                 soft_target_loss_weight, ce_loss_weight, device):
    ce_loss = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    teacher.eval()
    student.train()
    for _ in range(epochs):
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            with torch.no_grad():
                teacher_logits = teacher(inputs)
            student_logits = student(inputs)
            soft_targets = nn.functional.softmax(teacher_logits / T, dim=-1)
            soft_prob = nn.functional.log_softmax(student_logits / T, dim=-1)
            soft_targets_loss = torch.sum(soft_targets * (soft_targets.log() - soft_prob)) \
                / soft_prob.size()[0] * (T**2)
            label_loss = ce_loss(student_logits, labels)
            loss = soft_target_loss_weight * soft_targets_loss + ce_loss_weight * label_loss
            loss.backward()
            optimizer.step()


def train_cosine_loss(teacher, student, train_loader, epochs, learning_rate,
                      hidden_rep_loss_weight, ce_loss_weight, device):
    ce_loss = nn.CrossEntropyLoss()
    cosine_loss = nn.CosineEmbeddingLoss()
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    teacher.to(device)
    student.to(device)
    teacher.eval()
    student.train()
    for _ in range(epochs):
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            with torch.no_grad():
                _, teacher_hidden = teacher(inputs)
            student_logits, student_hidden = student(inputs)
            hidden_rep_loss = cosine_loss(student_hidden, teacher_hidden,
                                          target=torch.ones(inputs.size(0)).to(device))
            label_loss = ce_loss(student_logits, labels)
            loss = hidden_rep_loss_weight * hidden_rep_loss + ce_loss_weight * label_loss
            loss.backward()
            optimizer.step()


def train_mse_loss(teacher, student, train_loader, epochs, learning_rate, feature_map_weight,
                   ce_loss_weight, device):
    ce_loss = nn.CrossEntropyLoss()
    mse_loss = nn.MSELoss()
    optimizer = torch.optim.Adam(student.parameters(), lr=learning_rate)
    teacher.to(device)
    student.to(device)
    teacher.eval()
    student.train()
    for _ in range(epochs):
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            with torch.no_grad():
                _, teacher_feature_map = teacher(inputs)
            student_logits, regressor_feature_map = student(inputs)
            hidden_rep_loss = mse_loss(regressor_feature_map, teacher_feature_map)
            label_loss = ce_loss(student_logits, labels)
            loss = feature_map_weight * hidden_rep_loss + ce_loss_weight * label_loss
            loss.backward()
            optimizer.step()


def run_tutorial(train_split, test_split, epochs: int, device: str = "cpu") -> dict:
    """All five trainings as the tutorial runs them; {model: (train seconds, test acc %)}."""
    train_loader, test_loader = loaders(train_split, test_split)
    results = {}

    def timed(name, fn, model):
        start = time.perf_counter()
        fn()
        results[name] = (time.perf_counter() - start, test(model, test_loader, device))
        print(f"  tutorial {name}: {results[name][0]:.1f} s, {results[name][1]:.2f}%", flush=True)

    torch.manual_seed(42)
    teacher = DeepNN().to(device)
    timed("teacher", lambda: train(teacher, train_loader, epochs, 0.001, device), teacher)
    torch.manual_seed(42)
    student = LightNN().to(device)
    timed("student", lambda: train(student, train_loader, epochs, 0.001, device), student)
    torch.manual_seed(42)
    kd = LightNN().to(device)
    timed("kd", lambda: train_knowledge_distillation(
        teacher, kd, train_loader, epochs, 0.001, 2, 0.25, 0.75, device), kd)
    teacher_cos = ModifiedDeepNNCosine().to(device)
    teacher_cos.load_state_dict(teacher.state_dict())
    torch.manual_seed(42)
    cosine = ModifiedLightNNCosine().to(device)
    timed("cosine", lambda: train_cosine_loss(
        teacher_cos, cosine, train_loader, epochs, 0.001, 0.25, 0.75, device), cosine)
    teacher_reg = ModifiedDeepNNRegressor().to(device)
    teacher_reg.load_state_dict(teacher.state_dict())
    torch.manual_seed(42)
    hint = ModifiedLightNNRegressor().to(device)
    timed("hint", lambda: train_mse_loss(
        teacher_reg, hint, train_loader, epochs, 0.001, 0.25, 0.75, device), hint)
    return results
